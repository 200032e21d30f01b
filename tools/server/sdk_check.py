"""The pinned official `openai` SDK against a running `zoetrope serve`.

    python tools/server/sdk_check.py BASE_URL KEY OTHER_KEY

BASE_URL is the server's /v1 root (http://127.0.0.1:PORT/v1); OTHER_KEY is a second key,
used to check that one key never sees another's videos. Exits non-zero on the first
mismatch. Run by crates/zoetrope-cli/tests/serve.rs.
"""

import io
import struct
import sys
import warnings
import zlib

import openai
from openai import OpenAI

# The SDK marks the Videos API deprecated (OpenAI's Sora API shuts down); zoetrope keeps it.
warnings.simplefilter("ignore", DeprecationWarning)

PROMPT = "a red ball bounces to the right on a black background"


def png(width, height, rgb):
    """A solid-colour PNG, by hand (no imaging library needed)."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    print(f"ok: {what}")


def main():
    base, key, other_key = sys.argv[1:4]
    client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
    other = OpenAI(base_url=base, api_key=other_key, max_retries=0, timeout=60)

    models = [m.id for m in client.models.list()]
    check("zoetrope-world" in models, f"models.list names the built-in model ({models})")

    video = client.videos.create_and_poll(prompt=PROMPT, model="zoetrope-world", seconds="2", size="64x64")
    check(video.status == "completed", f"create_and_poll completes ({video.status}, {video.error})")
    check(video.progress == 100 and video.completed_at is not None, "a completed video is at 100% with a time")
    check(video.size == "64x64" and video.seconds == "2.125", f"size and seconds ({video.size}, {video.seconds})")

    mp4 = client.videos.download_content(video.id).read()
    check(mp4[4:8] == b"ftyp" and len(mp4) > 1000, f"download_content gives an MP4 ({len(mp4)} bytes)")
    thumb = client.videos.download_content(video.id, variant="thumbnail").read()
    check(thumb[:4] == b"RIFF" and thumb[8:12] == b"WEBP", "the thumbnail is WebP")
    sheet = client.videos.download_content(video.id, variant="spritesheet").read()
    check(sheet[:3] == b"\xff\xd8\xff", "the spritesheet is JPEG")

    got = client.videos.retrieve(video.id)
    check(got.id == video.id and got.prompt == PROMPT, "retrieve")

    # Image to video: a multipart upload, as the SDK sends files.
    image = client.videos.create(
        prompt="a blue square moves down on a white background",
        input_reference=("first.png", io.BytesIO(png(64, 64, (255, 255, 255))), "image/png"),
    )
    image = client.videos.poll(image.id)
    check(image.status == "completed", f"image to video from an uploaded input_reference ({image.error})")

    remix = client.videos.remix(video.id, prompt="a green ball bounces to the right on a black background")
    check(remix.remixed_from_video_id == video.id, "remix records its source")
    remix = client.videos.poll(remix.id)
    check(remix.status == "completed", f"remix completes ({remix.error})")

    # The pinned SDK cannot send `video={"id": …}` on extend/edit (its file extraction rejects
    # the dict before sending), so the clip goes up as a file; the server takes both.
    clip = ("clip.mp4", io.BytesIO(mp4), "video/mp4")
    ext = client.videos.extend(prompt=PROMPT, seconds="2", video=clip)
    ext = client.videos.poll(ext.id)
    check(ext.status == "completed", f"extend completes ({ext.error})")
    check(float(ext.seconds) > float(video.seconds), f"an extension is longer than its source ({ext.seconds} s)")

    clip = ("clip.mp4", io.BytesIO(mp4), "video/mp4")
    edit = client.videos.edit(prompt="a yellow ball bounces to the right on a black background", video=clip)
    edit = client.videos.poll(edit.id)
    check(edit.status == "completed", f"edit completes ({edit.error})")

    # zoetrope's own modes ride along as extra fields.
    loop = client.videos.poll(client.videos.create(prompt=PROMPT, extra_body={"mode": "loop"}).id)
    check(loop.status == "completed", f"mode=loop completes ({loop.error})")
    joined = client.videos.create(
        prompt=PROMPT, extra_body={"mode": "connect", "video_id": video.id, "second_video_id": remix.id}
    )
    joined = client.videos.poll(joined.id)
    check(joined.status == "completed", f"mode=connect joins two finished videos ({joined.error})")
    check(float(joined.seconds) > 2 * float(video.seconds), f"a connection holds both clips ({joined.seconds} s)")
    try:
        client.videos.create(prompt=PROMPT, extra_body={"mode": "connect", "video_id": video.id})
        check(False, "connect without its second clip is refused")
    except openai.BadRequestError as e:
        check("second_video_id" in str(e), "connect without its second clip is a 400 naming the field")

    # Pagination: pages of 2 walk every video once, newest first.
    ids = [v.id for v in client.videos.list(limit=2)]  # auto-paginates through after=last_id
    made = {video.id, image.id, remix.id, ext.id, edit.id, loop.id, joined.id}
    everything = [v.id for v in client.videos.list(limit=100).data]
    check(len(ids) == len(set(ids)) and ids == everything and made <= set(ids),
          f"pages of 2 walk all {len(ids)} videos once, newest first")
    first_page = client.videos.list(limit=2, order="asc")
    check(first_page.data[0].id == everything[-1] and first_page.has_more, "order=asc starts at the oldest")

    # One key never sees another's videos.
    try:
        other.videos.retrieve(video.id)
        check(False, "another key cannot retrieve the video")
    except openai.NotFoundError:
        check(True, "another key gets 404")
    check(len(other.videos.list().data) == 0, "another key lists nothing")

    try:
        client.videos.create(prompt=PROMPT, size="63x64")
        check(False, "an impossible size is refused")
    except openai.BadRequestError as e:
        check("multiples of 16" in str(e), f"an impossible size is a 400 naming the rule: {e.message}")
    try:
        client.videos.create(prompt=PROMPT, model="sora-2")
        check(False, "an unknown model is refused")
    except openai.BadRequestError as e:
        check("zoetrope-world" in str(e), "an unknown model is a 400 naming the installed ones")
    try:
        OpenAI(base_url=base, api_key="zt-not-a-key", max_retries=0).videos.list()
        check(False, "a bad key is refused")
    except openai.AuthenticationError:
        check(True, "a bad key gets 401")

    deleted = client.videos.delete(video.id)
    check(deleted.deleted and deleted.id == video.id, "delete")
    try:
        client.videos.retrieve(video.id)
        check(False, "a deleted video is gone")
    except openai.NotFoundError:
        check(True, "a deleted video is 404")
    print("SDK CHECK PASSED")


if __name__ == "__main__":
    main()
