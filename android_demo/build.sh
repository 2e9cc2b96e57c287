#!/usr/bin/env bash
# Build the edgespec demo APK without Gradle or Google's SDK (seconds):
#   android_demo/build.sh [OUT.apk]        (default android_demo/build/edgespec-demo.apk)
# Tools: Debian bookworm's aapt, zipalign, apksigner (apt-get install aapt zipalign apksigner;
# ./install.sh does) and a JDK's javac/keytool. bookworm has no android.jar and no dexer, so
# android.jar (API 23) and dx come from the previous release's libandroid-23-java and
# dalvik-exchange packages, fetched once with a private APT configuration (the system's APT
# sources are not touched), checked against the sha256 below and cached in
# $EDGESPEC_HOME/android-sdk/. The web app (android_demo/web) and onnxruntime-web's WASM files
# (android_demo/node_modules: npm ci --ignore-scripts) go into assets/; models do not (adb push
# them, see android_demo/README.md). The APK is signed with a debug key kept beside the cache.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-$HERE/build/edgespec-demo.apk}"
CACHE="${EDGESPEC_HOME:-$HOME/.cache/edgespec}/android-sdk"
MIRROR="${EDGESPEC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# package=version sha256 (bullseye main; `apt-get download` checks the archive's signed
# Release file too)
DEBS=(
  "libandroid-23-java=6.0.1+r72-6 8af1b6df556971dda0a6da3536ea526a838e0c363afcdd454213d8bce94793e3"
  "dalvik-exchange=10.0.0+r36-1 8fc128db7c27253d963eb9b33de79b197162a4749d2ba69019b2fd0664cbd7fe"
)
ANDROID_JAR="$CACHE/usr/share/java/com.android.android-23.jar"
DX_JAR="$CACHE/usr/share/java/com.android.dx-10.0.0.jar"
# onnxruntime-web files the page loads: the WASM-only build and the WebGPU build (asyncify)
ORT_FILES=(ort.wasm.min.mjs ort.webgpu.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm
  ort-wasm-simd-threaded.asyncify.mjs ort-wasm-simd-threaded.asyncify.wasm)

die() { echo "error: $*" >&2; exit 1; }
for t in aapt zipalign apksigner javac java keytool; do
  command -v "$t" >/dev/null || die "$t is missing; run ./install.sh (or apt-get install aapt zipalign apksigner default-jdk-headless)"
done
[[ -d "$HERE/node_modules/onnxruntime-web/dist" ]] || die "android_demo/node_modules is missing; run 'npm ci --ignore-scripts' in android_demo (./install.sh does)"

fetch_sdk() {
  [[ -f "$ANDROID_JAR" && -f "$DX_JAR" ]] && return
  echo "fetching android.jar (API 23) and dx from Debian bullseye into $CACHE"
  local work; work="$(mktemp -d)"; trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$work/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bullseye main" >"$work/sources.list"
  cat >"$work/apt.conf" <<CONF
Dir::State "$work/state";
Dir::Cache "$work/cache";
Dir::Etc::SourceList "$work/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "/dev/null";
APT::Sandbox::User "root";
CONF
  export APT_CONFIG="$work/apt.conf"
  apt-get update -qq || die "cannot reach $MIRROR (bullseye); set EDGESPEC_DEBIAN_MIRROR to a mirror or archive.debian.org"
  local entry pkg sum deb
  for entry in "${DEBS[@]}"; do
    pkg="${entry%% *}"; sum="${entry##* }"
    (cd "$work/debs" && apt-get download -qq "$pkg") || die "cannot download $pkg from $MIRROR bullseye"
    deb="$(ls "$work/debs/${pkg%%=*}"_*.deb)"
    echo "$sum  $deb" | sha256sum -c --quiet - || die "$deb does not match its pinned sha256 $sum"
    dpkg-deb -x "$deb" "$work/root"
  done
  unset APT_CONFIG
  mkdir -p "$CACHE.tmp/usr/share/java" && rm -rf "$CACHE"
  cp "$work/root/usr/share/java/com.android.android-23.jar" "$work/root/usr/share/java/com.android.dx-10.0.0.jar" "$CACHE.tmp/usr/share/java/"
  mv "$CACHE.tmp" "$CACHE"
}
fetch_sdk

B="$(mktemp -d)"; trap 'rm -rf "$B"' EXIT
mkdir -p "$B/gen" "$B/obj" "$B/dex" "$B/assets/vendor/ort" "$B/assets/vendor/transformers"
cp "$HERE"/web/* "$B/assets/"
for f in "${ORT_FILES[@]}"; do cp "$HERE/node_modules/onnxruntime-web/dist/$f" "$B/assets/vendor/ort/"; done
cp "$HERE/node_modules/@huggingface/transformers/dist/transformers.min.js" "$B/assets/vendor/transformers/"

N="$HERE/native"
aapt package -f -m -J "$B/gen" -M "$N/AndroidManifest.xml" -S "$N/res" -I "$ANDROID_JAR"
javac -nowarn -Xlint:-options -source 8 -target 8 -bootclasspath "$ANDROID_JAR" -d "$B/obj" $(find "$N/src" "$B/gen" -name '*.java')
java -jar "$DX_JAR" --dex --min-sdk-version=23 --output="$B/dex/classes.dex" "$B/obj"
aapt package -f -M "$N/AndroidManifest.xml" -S "$N/res" -A "$B/assets" -I "$ANDROID_JAR" -F "$B/unsigned.apk"
(cd "$B/dex" && aapt add -f "$B/unsigned.apk" classes.dex >/dev/null)
zipalign -f -p 4 "$B/unsigned.apk" "$B/aligned.apk"
KS="${EDGESPEC_HOME:-$HOME/.cache/edgespec}/android-debug.keystore"
if [[ ! -f "$KS" ]]; then
  keytool -genkeypair -keystore "$KS" -storepass android -alias androiddebugkey -keypass android \
    -keyalg RSA -keysize 2048 -validity 10000 -dname "CN=edgespec debug" >/dev/null 2>&1
fi
mkdir -p "$(dirname "$OUT")"
apksigner sign --ks "$KS" --ks-pass pass:android --key-pass pass:android --out "$OUT.partial" "$B/aligned.apk"
mv "$OUT.partial" "$OUT"
rm -f "$OUT.partial.idsig" "$OUT.idsig"
echo "built $OUT ($(du -h "$OUT" | cut -f1)); install with: adb install -r $OUT"
