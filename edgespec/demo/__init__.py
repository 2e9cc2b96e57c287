"""The browser/WebView demo (``android_demo/``): ``edgespec demo serve`` serves its web app.

The app itself is JavaScript (``android_demo/web``): onnxruntime-web runs a bundle's ONNX
target, transformers.js tokenizes, and the decoding loop (plain, sampling, n-gram speculation)
is a JS port of edgespec's. This package only serves it, with the headers the app needs.
"""
