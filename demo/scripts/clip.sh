#!/bin/sh
# Makes the player's clip, demo/src/clip.webm: 6 s of a generated, seamlessly looping
# colour field (VP9 in WebM, no audio, ~30 kB). Every term is periodic in T with period 6 s,
# so the last frame leads into the first. The clip is committed; this script only remakes it.
# Needs ffmpeg with libvpx (Debian: apt-get install ffmpeg).
set -eu
cd "$(dirname "$0")/.."
ffmpeg -hide_banner -loglevel error -y -f lavfi \
  -i "nullsrc=s=320x180:r=24:d=6,format=yuv420p,geq=\
lum='100+55*sin(X/26+2*PI*T/6)*cos(Y/19-2*PI*T/3)+30*sin(hypot(X-160-60*cos(2*PI*T/6),Y-90-40*sin(2*PI*T/6))/9)':\
cb='128+60*sin(X/60+2*PI*T/6)':cr='128+60*cos(Y/40-2*PI*T/6)'" \
  -c:v libvpx-vp9 -b:v 0 -crf 42 -row-mt 1 -deadline good -an -fflags +bitexact src/clip.webm
ls -l src/clip.webm
