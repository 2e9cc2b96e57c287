package org.edgespec.demo;

import android.app.Activity;
import android.content.Intent;
import android.net.Uri;
import android.os.Bundle;
import android.webkit.JavascriptInterface;
import android.webkit.WebResourceRequest;
import android.webkit.WebResourceResponse;
import android.webkit.WebSettings;
import android.webkit.WebView;
import android.webkit.WebViewClient;

import java.io.ByteArrayInputStream;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;

/**
 * The edgespec demo in a WebView. The page (android_demo/web, packed into assets/) is served
 * from https://appassets.androidplatform.net/assets/ through shouldInterceptRequest, with
 * application/wasm and COOP/COEP headers (file:// breaks ES modules and fetch). Models are
 * NOT in the APK: assets/models/NAME/... is read from getExternalFilesDir(null)/models/NAME/,
 * where `adb push` puts them. WebView is never cross-origin isolated, so onnxruntime-web runs
 * WASM single-threaded here; "Open in Chrome" serves the same files on 127.0.0.1 and opens
 * Chrome, which is isolated by COOP/COEP and may use WASM threads.
 */
public class MainActivity extends Activity {
    static final String HOST = "appassets.androidplatform.net";
    static final String PREFIX = "/assets/";
    private WebView web;
    private Thread server;
    private int serverPort = -1;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        web = new WebView(this);
        WebSettings s = web.getSettings();
        s.setJavaScriptEnabled(true);
        s.setDomStorageEnabled(true);
        s.setAllowFileAccess(false);
        s.setAllowContentAccess(false);
        web.addJavascriptInterface(new Bridge(), "EdgespecAndroid");
        web.setWebViewClient(new WebViewClient() {
            @Override
            public WebResourceResponse shouldInterceptRequest(WebView view, WebResourceRequest req) {
                Uri u = req.getUrl();
                if (!HOST.equals(u.getHost())) return null;
                return serve(u.getPath());
            }
        });
        setContentView(web);
        web.loadUrl("https://" + HOST + PREFIX + "index.html");
    }

    /** The same layout as `edgespec demo serve`: assets/ for the app and vendor/, the
     * external files folder for models/. */
    WebResourceResponse serve(String path) {
        Map<String, String> headers = new HashMap<>();
        headers.put("Cross-Origin-Opener-Policy", "same-origin");
        headers.put("Cross-Origin-Embedder-Policy", "require-corp");
        headers.put("Cross-Origin-Resource-Policy", "same-origin");
        headers.put("Cache-Control", "no-cache");
        try {
            InputStream in = open(path);
            return new WebResourceResponse(mime(path), null, 200, "OK", headers, in);
        } catch (IOException e) {
            byte[] msg = "not found\n".getBytes(StandardCharsets.UTF_8);
            return new WebResourceResponse("text/plain", "utf-8", 404, "Not Found", headers,
                    new ByteArrayInputStream(msg));
        }
    }

    InputStream open(String path) throws IOException {
        if (path == null || !path.startsWith(PREFIX) || path.contains("..")) throw new IOException(path);
        String rel = path.substring(PREFIX.length());
        if (rel.isEmpty()) rel = "index.html";
        File models = new File(getExternalFilesDir(null), "models");
        if (rel.equals("models/index.json")) return modelIndex(models);
        if (rel.startsWith("models/")) return new FileInputStream(new File(models, rel.substring(7)));
        return getAssets().open(rel);
    }

    /** [{"name": NAME, "url": "models/NAME/"}] for each folder under models/ with edgespec.json. */
    static InputStream modelIndex(File models) {
        StringBuilder b = new StringBuilder("[");
        File[] dirs = models.listFiles();
        if (dirs != null) {
            for (File d : dirs) {
                if (!new File(d, "edgespec.json").isFile()) continue;
                if (b.length() > 1) b.append(',');
                String n = d.getName().replace("\\", "").replace("\"", "");
                b.append("{\"name\":\"").append(n).append("\",\"url\":\"models/").append(n).append("/\"}");
            }
        }
        b.append(']');
        return new ByteArrayInputStream(b.toString().getBytes(StandardCharsets.UTF_8));
    }

    static String mime(String path) {
        if (path.endsWith(".wasm")) return "application/wasm";
        if (path.endsWith(".mjs") || path.endsWith(".js")) return "text/javascript";
        if (path.endsWith(".html")) return "text/html";
        if (path.endsWith(".css")) return "text/css";
        if (path.endsWith(".json")) return "application/json";
        return "application/octet-stream";
    }

    /** window.EdgespecAndroid in the page. */
    class Bridge {
        @JavascriptInterface
        public void openInChrome() {
            int port = startLocalServer();
            Intent i = new Intent(Intent.ACTION_VIEW, Uri.parse("http://127.0.0.1:" + port + PREFIX + "index.html"));
            i.setPackage("com.android.chrome");
            try {
                startActivity(i);
            } catch (android.content.ActivityNotFoundException e) {
                i.setPackage(null);  // no Chrome: any browser (it may not be isolated)
                startActivity(i);
            }
        }
    }

    /** A minimal HTTP/1.0 server on 127.0.0.1 serving the same paths with the same headers. */
    synchronized int startLocalServer() {
        if (serverPort > 0) return serverPort;
        try {
            final ServerSocket ss = new ServerSocket(0, 16, InetAddress.getByName("127.0.0.1"));
            serverPort = ss.getLocalPort();
            // anonymous classes, not lambdas: API 23's android.jar has no java.lang.invoke
            server = new Thread(new Runnable() {
                @Override
                public void run() {
                    while (!ss.isClosed()) {
                        try {
                            final Socket c = ss.accept();
                            new Thread(new Runnable() {
                                @Override
                                public void run() {
                                    handle(c);
                                }
                            }).start();
                        } catch (IOException e) {
                            return;
                        }
                    }
                }
            });
            server.setDaemon(true);
            server.start();
        } catch (IOException e) {
            throw new RuntimeException(e);
        }
        return serverPort;
    }

    void handle(Socket c) {
        try (Socket sock = c; OutputStream out = sock.getOutputStream()) {
            StringBuilder line = new StringBuilder();
            InputStream in = sock.getInputStream();
            for (int ch; (ch = in.read()) != -1 && ch != '\n'; ) line.append((char) ch);
            String[] parts = line.toString().trim().split(" ");
            String path = parts.length > 1 ? Uri.parse(parts[1]).getPath() : "/";
            WebResourceResponse r = serve(path);
            StringBuilder h = new StringBuilder("HTTP/1.0 " + r.getStatusCode() + " " + r.getReasonPhrase() + "\r\n");
            h.append("Content-Type: ").append(r.getMimeType()).append("\r\n");
            for (Map.Entry<String, String> e : r.getResponseHeaders().entrySet()) {
                h.append(e.getKey()).append(": ").append(e.getValue()).append("\r\n");
            }
            h.append("\r\n");
            out.write(h.toString().getBytes(StandardCharsets.UTF_8));
            byte[] buf = new byte[1 << 16];
            try (InputStream body = r.getData()) {
                for (int n; (n = body.read(buf)) > 0; ) out.write(buf, 0, n);
            }
        } catch (IOException ignored) {
            // the browser closed the connection
        }
    }
}
