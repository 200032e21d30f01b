#!/usr/bin/env bash
# Checks that headless Chromium can load and decode an MP4 in a <video>
# element, and that it reports the expected size and duration.
#
#   tools/browser-check/check.sh FILE.mp4 WIDTH HEIGHT DURATION_SECONDS [TOLERANCE_SECONDS]
#
# TOLERANCE defaults to 0.07 s (about one frame at 16 fps). H.264 4:2:0
# cannot code odd sizes: zoetrope pads with a copy of the edge and records the
# true size in the track header. Its own reader crops back exactly; Chromium
# shows the padded picture scaled to the header's aspect ratio (97x63 shows
# as 99x64), so for an odd WIDTH or HEIGHT a size within 2 pixels is accepted
# with a note. Needs the
# `chromium` binary (Debian: apt-get install chromium); set CHROMIUM to use
# another. Exits 0 when everything matches, 1 on a mismatch or playback
# error, 2 on bad usage or a missing browser.
set -euo pipefail

usage() {
    echo "usage: $0 FILE.mp4 WIDTH HEIGHT DURATION_SECONDS [TOLERANCE_SECONDS]" >&2
    exit 2
}
[[ $# -ge 4 && $# -le 5 ]] || usage
file=$1 want_w=$2 want_h=$3 want_dur=$4 tol=${5:-0.07}
[[ -f $file ]] || { echo "browser-check: no such file: $file" >&2; exit 2; }
for n in "$want_w" "$want_h"; do
    [[ $n =~ ^[0-9]+$ ]] || { echo "browser-check: width/height must be whole numbers, got '$n'" >&2; exit 2; }
done
for n in "$want_dur" "$tol"; do
    [[ $n =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "browser-check: duration/tolerance must be numbers of seconds, got '$n'" >&2; exit 2; }
done

browser=${CHROMIUM:-}
if [[ -z $browser ]]; then
    for b in chromium chromium-browser google-chrome; do
        if command -v "$b" >/dev/null; then browser=$(command -v "$b"); break; fi
    done
fi
[[ -n $browser ]] || { echo "browser-check: no Chromium found; install it (apt-get install chromium) or set CHROMIUM=/path/to/chrome" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Same-directory file:// URLs keep the page and the video same-origin.
cp "$file" "$work/clip.mp4"
cat >"$work/page.html" <<'HTML'
<!doctype html>
<html><body>
<video id="v" muted playsinline preload="auto" src="clip.mp4"></video>
<pre id="result">PENDING</pre>
<script>
const v = document.getElementById('v');
const out = document.getElementById('result');
const report = (s) => { out.textContent = s; };
v.addEventListener('loadeddata', () => {
  report('LOADED ' + v.videoWidth + ' ' + v.videoHeight + ' ' + v.duration);
});
v.addEventListener('error', () => {
  const e = v.error;
  report('ERROR ' + (e ? e.code + ' ' + (e.message || '') : 'unknown'));
});
setTimeout(() => { if (out.textContent === 'PENDING') report('TIMEOUT readyState=' + v.readyState); }, 10000);
</script>
</body></html>
HTML

profile="$work/profile"
set +e
dom=$(timeout 90 "$browser" --headless --no-sandbox --disable-gpu --disable-quic \
    --no-first-run --disable-background-networking --disable-component-update \
    --disable-sync --disable-extensions --mute-audio \
    --user-data-dir="$profile" \
    --autoplay-policy=no-user-gesture-required --allow-file-access-from-files \
    --virtual-time-budget=15000 --dump-dom "file://$work/page.html" 2>"$work/stderr")
status=$?
set -e
line=$(printf '%s\n' "$dom" | sed -n 's/.*<pre id="result">\([^<]*\)<\/pre>.*/\1/p' | head -n1)
if [[ $status -ne 0 || -z $line ]]; then
    echo "browser-check: Chromium did not produce a result (exit $status); its log:" >&2
    tail -n 20 "$work/stderr" >&2
    exit 1
fi
echo "browser-check: $file -> $line"
read -r kind got_w got_h got_dur <<<"$line"
if [[ $kind != LOADED ]]; then
    echo "browser-check: FAIL: the video did not load ($line). MediaError code 4 means the browser cannot decode this file (codec or container not supported)." >&2
    exit 1
fi
fail=0
odd=$(( want_w % 2 + want_h % 2 ))
dw=$(( got_w - want_w )) dh=$(( got_h - want_h ))
if [[ $got_w == "$want_w" && $got_h == "$want_h" ]]; then
    :
elif (( odd > 0 && dw >= 0 && dw <= 2 && dh >= 0 && dh <= 2 )); then
    echo "browser-check: note: ${want_w}x${want_h} shows as ${got_w}x${got_h}, padded to even for H.264 4:2:0"
else
    echo "browser-check: FAIL: size is ${got_w}x${got_h}, expected ${want_w}x${want_h}" >&2
    fail=1
fi
if ! awk -v a="$got_dur" -v b="$want_dur" -v t="$tol" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t) }'; then
    echo "browser-check: FAIL: duration is ${got_dur}s, expected ${want_dur}s +/- ${tol}s" >&2
    fail=1
fi
if [[ $fail -eq 0 ]]; then
    echo "browser-check: OK (${got_w}x${got_h}, ${got_dur}s)"
fi
exit $fail
