"""Reading videos for prediction: sampling at 1 fps by timestamps, VFR, rotation, odd sizes,
corrupt packets, truncated and unusable files (cvsjepa.data.video), and the clip window."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from cvsjepa.data.endoscapes import causal_clip
from cvsjepa.data.transforms import preprocess_frames
from cvsjepa.errors import DataError
from cvsjepa.predict.timeline import iter_clips
from cvsjepa.data.video import VideoReader, open_frames

av = pytest.importorskip("av")


# ----------------------------------------------------------------------------- helpers (test_predict uses them)


def encode(path: Path, frames, fps: float = 1.0, *, codec: str = "libx264rgb", pix_fmt: str | None = None,
           options: dict | None = None, times_s: list[float] | None = None,
           container_options: dict | None = None) -> Path:
    """Write uint8 [H, W, 3] frames as a video. Default: lossless RGB H.264 (decodes to the same pixels).

    ``times_s``: presentation times (a VFR stream, millisecond time base).
    """
    defaults = {"libx264rgb": ("rgb24", {"qp": "0", "preset": "ultrafast"}),
                "libx264": ("yuv420p", {"crf": "18", "preset": "ultrafast"}),
                "mjpeg": ("yuvj444p", {"q:v": "2"}), "ffv1": ("bgr0", {})}
    pf, opts = defaults.get(codec, ("yuv420p", {}))
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options=container_options or {}) as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1000) if times_s is None else 1000)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt or pf
        s.options = {**opts, **(options or {})}
        if times_s is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i, a in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")
            if times_s is not None:
                f.pts, f.time_base = round(times_s[i] * 1000), Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return Path(path)


def coded_frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """Frame i is a flat colour that encodes i (readable back through a lossy codec), with a marker."""
    out = []
    for i in range(n):
        a = np.zeros((h, w, 3), np.uint8)
        a[..., 0] = 20 + 8 * (i % 25)
        a[..., 1] = 20 + 8 * (i // 25)
        out.append(a)
    return out


def decode_code(img: np.ndarray) -> int:
    r, g = img[..., 0].mean(), img[..., 1].mean()
    return int(round((r - 20) / 8)) + 25 * int(round((g - 20) / 8))


def asymmetric_image(h: int = 48, w: int = 80) -> np.ndarray:
    """Textured, no symmetry, so a wrong rotation or flip cannot go unnoticed."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    a[: h // 3, : w // 4] = (250, 10, 10)
    return a


def read_all(path, fps: float = 1.0):
    with open_frames(path, fps) as r:
        samples = list(r)
        return samples, r.report, r.info


def corrupt_packet(src: Path, dst: Path, which: float = 0.5) -> Path:
    """Copy ``src`` and overwrite the middle half of the packet at fraction ``which`` of the stream."""
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    pos, size = packets[int(len(packets) * which)]
    data = bytearray(src.read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, size // 2, dtype=np.uint8).tobytes()
    data[pos + size // 4: pos + size // 4 + len(noise)] = noise
    dst.write_bytes(bytes(data))
    return dst


def truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("rate,preset", [(1, "ultrafast"), (25, "ultrafast"), (25, "medium")])
def test_cfr_sampling_takes_the_frame_at_each_second(tmp_path, rate, preset):
    frames = coded_frames(10 * rate)  # "medium" has B-frames: decode order differs from presentation order
    samples, report, info = read_all(encode(tmp_path / "v.mp4", frames, fps=rate, codec="libx264",
                                            options={"preset": preset}))
    assert [s.time_s for s in samples] == [float(k) for k in range(10)]
    assert [s.frame_index for s in samples] == [k * rate for k in range(10)]
    assert [decode_code(s.image) for s in samples] == [k * rate for k in range(10)]
    assert report.complete and report.decoded_frames == 10 * rate and not report.errors
    assert info.source_fps == rate and info.declared_duration_s == pytest.approx(10)


@pytest.mark.parametrize("ext,start", [("mp4", 0.0), ("mkv", 0.0), ("mkv", 7.3)])
def test_variable_frame_rate_uses_presentation_times(tmp_path, ext, start):
    times = [0.0, 0.1, 0.9, 1.0, 1.5, 3.7, 3.8, 4.0, 6.5]  # gaps, a frame exactly on 1.0 and 4.0
    path = encode(tmp_path / f"vfr.{ext}", coded_frames(len(times)), times_s=[start + t for t in times],
                  codec="libx264")  # start > 0: time counts from the first frame, as in a cut-out segment
    samples, report, _ = read_all(path)
    # the last frame with pts <= t: t=0 -> 0; 1 -> 3 (pts 1.0); 2, 3 -> 4 (1.5); 4 -> 7 (4.0); 5, 6 -> 7
    assert [s.frame_index for s in samples] == [0, 3, 4, 4, 7, 7, 7]
    assert [decode_code(s.image) for s in samples] == [0, 3, 4, 4, 7, 7, 7]
    assert [s.source_time_s for s in samples] == pytest.approx([0, 1.0, 1.5, 1.5, 4.0, 4.0, 4.0])
    assert report.complete


def test_sampling_at_another_rate(tmp_path):
    path = encode(tmp_path / "v.mp4", coded_frames(50), fps=25, codec="libx264")
    samples, _, _ = read_all(path, fps=2)
    assert [s.frame_index for s in samples] == [0, 12, 25, 37]  # t = 0, .5, 1, 1.5: the last frame <= t


@pytest.mark.parametrize("ext,codec", [("mp4", "libx264"), ("mov", "libx264"), ("mkv", "libx265"),
                                       ("webm", "libvpx-vp9"), ("avi", "mjpeg"), ("mkv", "ffv1"), ("mp4", "mpeg4")])
def test_containers_and_codecs(tmp_path, ext, codec):
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec}")
    samples, report, info = read_all(encode(tmp_path / f"v.{ext}", coded_frames(6, 96, 128), fps=1, codec=codec))
    assert [decode_code(s.image) for s in samples] == list(range(6)) and report.complete


@pytest.mark.parametrize("rotation,hflip,vflip", [(90, False, False), (-90, False, False), (180, False, False),
                                                   (0, True, False), (0, False, True), (90, True, False),
                                                   (-90, True, False)])
def test_display_matrix_gives_upright_frames(tmp_path, rotation, hflip, vflip):
    """PyAV's writer: ``rotation`` degrees counter-clockwise, then the flips (the displayed frame).
    -90 is an iPhone portrait clip (the QuickTime matrix [0 1; -1 0]): shown turned clockwise."""
    upright = asymmetric_image()
    flipped = upright[:, ::-1] if hflip else upright
    flipped = flipped[::-1] if vflip else flipped
    stored = np.ascontiguousarray(np.rot90(flipped, k=-rotation // 90))  # what the file holds
    path = tmp_path / "rot.mp4"
    with av.open(str(path), "w") as c:  # lossless RGB, so the comparison is exact
        s = c.add_stream("libx264rgb", rate=1)
        s.width, s.height, s.pix_fmt, s.options = stored.shape[1], stored.shape[0], "rgb24", {"qp": "0"}
        s.set_display_rotation(rotation, hflip=hflip, vflip=vflip)
        for _ in range(2):
            for p in s.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    samples, _, info = read_all(path)
    np.testing.assert_array_equal(samples[0].image, upright)
    assert (info.height, info.width) == upright.shape[:2]
    assert info.orientation != "none" and not info.orientation.startswith("nearest")


@pytest.mark.parametrize("size", [(97, 161), (40, 300), (301, 37), (17, 17)])
def test_odd_sizes_go_through_the_training_transform(tmp_path, size):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(3)]
    samples, _, _ = read_all(encode(tmp_path / "odd.mkv", frames))  # lossless RGB: same pixels back
    for s, original in zip(samples, frames):
        np.testing.assert_array_equal(s.image, original)
    clips = list(iter_clips(iter(samples), crop=64, frames=2, stride=1))
    assert [tuple(c.shape) for _, c in clips] == [(2, 3, 64, 64)] * 3
    want = preprocess_frames(torch.from_numpy(frames[2])[None], 64)[0]
    assert torch.equal(clips[2][1][1], want)


def test_clip_window_pads_like_training_and_stays_bounded(tmp_path):
    """Clips of frames=4, stride=2 over 12 samples: positions from causal_clip, the first frame as padding."""
    frames = coded_frames(12)
    samples, _, _ = read_all(encode(tmp_path / "v.mp4", frames))
    pre = {s.index: preprocess_frames(torch.from_numpy(s.image)[None], 64)[0] for s in samples}
    for meta, clip in iter_clips(iter(samples), crop=64, frames=4, stride=2):
        positions = causal_clip(list(range(12)), meta.index, 4, 2)
        assert torch.equal(clip, torch.stack([pre[q] for q in positions])), meta.index
    assert causal_clip(list(range(12)), 1, 4, 2) == [0, 0, 0, 1]  # padding with the first frame


def test_video_shorter_than_one_clip(tmp_path):
    samples, report, _ = read_all(encode(tmp_path / "short.mp4", coded_frames(2)))
    clips = list(iter_clips(iter(samples), crop=64, frames=16, stride=1))
    assert len(clips) == 2 and clips[1][1].shape[0] == 16
    assert torch.equal(clips[1][1][0], clips[1][1][14]) and not torch.equal(clips[1][1][14], clips[1][1][15])
    assert report.complete


# ----------------------------------------------------------------------------- damaged and unusable input


@pytest.mark.parametrize("codec,ext", [("mjpeg", "avi"), ("mjpeg", "mkv")])
def test_corrupt_packet_is_skipped_and_counted(tmp_path, codec, ext):
    clean = encode(tmp_path / f"clean.{ext}", coded_frames(20, 96, 128), codec=codec)
    samples, report, _ = read_all(corrupt_packet(clean, tmp_path / f"bad.{ext}"))
    assert report.skipped_packets == 1 and report.complete
    assert len(samples) == 20  # the sample of the lost frame shows the frame before it
    assert [decode_code(s.image) for s in samples] == [9 if k == 10 else k for k in range(20)]
    assert any("skipped 1 packet" in w for w in report.warnings)


def test_no_decodable_frame_is_an_error(tmp_path):
    clean = encode(tmp_path / "clean.avi", coded_frames(3, 96, 128), codec="mjpeg")
    with av.open(str(clean)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    data = bytearray(clean.read_bytes())
    for pos, size in packets:
        data[pos: pos + size] = bytes(size)
    (tmp_path / "zeros.avi").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"zeros\.avi: no video frame could be decoded .*3 packet"):
        read_all(tmp_path / "zeros.avi")


def test_corrupt_h264_frame_is_not_sampled(tmp_path):
    clean = encode(tmp_path / "clean.mkv", coded_frames(30, 96, 128), codec="libx264", options={"g": "5"})
    samples, report, _ = read_all(corrupt_packet(clean, tmp_path / "bad.mkv"))
    assert report.complete and len(samples) == 30
    assert report.corrupt_frames + report.skipped_packets >= 1  # the decoder conceals, and flags the frame


@pytest.mark.parametrize("ext,options", [("mkv", None), ("mp4", {"movflags": "faststart"}), ("avi", None)])
def test_truncated_file_gives_the_part_before_the_cut(tmp_path, ext, options):
    codec = "mjpeg" if ext == "avi" else "libx264"
    clean = encode(tmp_path / f"clean.{ext}", coded_frames(40, 96, 128), codec=codec, container_options=options)
    samples, report, _ = read_all(truncate(clean, tmp_path / f"cut.{ext}"))
    assert not report.complete and "truncated" in report.errors[0]
    assert 5 <= len(samples) < 35
    assert [decode_code(s.image) for s in samples] == list(range(len(samples)))


def test_read_error_part_way_keeps_what_was_read(tmp_path, monkeypatch):
    import io

    clean = encode(tmp_path / "v.mkv", coded_frames(40, 96, 128), codec="libx264")
    limit = clean.stat().st_size // 2

    class FailingDisk(io.RawIOBase):  # an I/O error half way through the file
        def __init__(self, path):
            self.f = open(path, "rb")
        def readable(self): return True
        def seekable(self): return True
        def seek(self, offset, whence=0): return self.f.seek(offset, whence)
        def tell(self): return self.f.tell()
        def close(self): self.f.close()
        def readinto(self, b):
            if self.f.tell() > limit:
                raise OSError(5, "Input/output error")
            data = self.f.read(min(len(b), 4096))
            b[:len(data)] = data
            return len(data)

    real_open = av.open
    monkeypatch.setattr(av, "open", lambda path, *a, **k: real_open(FailingDisk(path), *a, **k))
    samples, report, _ = read_all(clean)
    assert not report.complete and "Input/output error" in report.errors[0] and "failed after" in report.errors[0]
    assert 5 <= len(samples) < 35
    assert [decode_code(s.image) for s in samples] == list(range(len(samples)))


def test_truncated_mp4_without_index_is_a_clear_error(tmp_path):
    clean = encode(tmp_path / "clean.mp4", coded_frames(20), codec="libx264")
    cut = truncate(clean, tmp_path / "cut.mp4")
    with pytest.raises(DataError, match=r"cut\.mp4 cannot be read as a video.*moov"):
        open_frames(cut, 1.0)


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for i in range(10):
            frame.pts = i * 1024
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _file(name: str, data: bytes):
    def make(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name
    return make


def _folder(d: Path) -> Path:
    (d / "no_frames").mkdir()
    (d / "no_frames" / "notes.txt").write_text("x")
    return d / "no_frames"


@pytest.mark.parametrize("make,pattern", [
    (lambda d: d / "missing.mp4", r"missing\.mp4 does not exist"),
    (_file("empty.mp4", b""), r"empty\.mp4 is empty \(0 bytes\)"),
    (_file("notes.txt", b"not a video\n" * 20), r"notes\.txt cannot be read as a video"),
    (_file("fake.mp4", b"\x00" * 5000), r"fake\.mp4 cannot be read as a video"),
    (lambda d: _audio_only(d / "sound.m4a"), r"sound\.m4a has no video stream \(1 audio\)"),
    (_folder, r"no_frames is a folder without JPEG/PNG frames"),
])
def test_unusable_input_is_one_clear_error(tmp_path, make, pattern):
    with pytest.raises(DataError, match=pattern):
        open_frames(make(tmp_path), 1.0)


# ----------------------------------------------------------------------------- folders of frames


def test_frame_folder_sorts_by_frame_number(tmp_path):
    from PIL import Image

    frames = coded_frames(45)
    for k in (0, 1, 2, 39, 40, 44):  # frame numbers count 25 fps frames: 975 < 1000 only numerically
        Image.fromarray(frames[k]).save(tmp_path / f"7_{k * 25}.png")
    samples, report, info = read_all(tmp_path)
    assert [s.frame_index for s in samples] == [0, 25, 50, 975, 1000, 1100]
    assert [decode_code(s.image) for s in samples] == [0, 1, 2, 39, 40, 44]
    assert [s.time_s for s in samples] == [0, 1, 2, 3, 4, 5]  # the folder is taken as already 1 fps
    assert info.kind == "frames" and report.complete


def test_frame_folder_of_several_videos_is_refused(tmp_path):
    from PIL import Image

    for name in ("5_0.jpg", "5_25.jpg", "6_0.jpg"):
        Image.fromarray(coded_frames(1)[0]).save(tmp_path / name)
    with pytest.raises(DataError, match=r"frames of 2 sequences \(name prefixes '5_', '6_'\)"):
        open_frames(tmp_path, 1.0)


def test_frame_folder_holds_the_previous_frame_over_a_bad_file(tmp_path):
    from PIL import Image

    frames = coded_frames(4)
    for k in range(4):
        Image.fromarray(frames[k]).save(tmp_path / f"f_{k:03d}.jpg", quality=95)
    (tmp_path / "f_002.jpg").write_bytes(b"\xff\xd8 broken")
    samples, report, _ = read_all(tmp_path, fps=2)
    assert [s.time_s for s in samples] == [0, 0.5, 1.0, 1.5]
    assert [decode_code(s.image) for s in samples] == [0, 1, 1, 3]
    assert report.corrupt_frames == 1 and "f_002.jpg" in report.warnings[0]


def test_reader_kind_and_rate_check(tmp_path):
    path = encode(tmp_path / "v.mp4", coded_frames(2))
    with open_frames(path, 1) as r:
        assert isinstance(r, VideoReader) and r.info.kind == "video"
    with pytest.raises(DataError, match="positive"):
        open_frames(path, 0)
