"""Transcripts: encodings, SRT/VTT/TXT parsing, sidecar lookup, embedded streams, windows."""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
import threading
from pathlib import Path

import imageio_ffmpeg
import pytest

from pipeline.errors import DecodeError, PipelineError, TranscriptError
from pipeline.media import ffmpeg_bin, subtitles
from pipeline.media.subtitles import (
    _is_text_codec,
    collapse_whitespace,
    extract_embedded,
    find_transcript,
    load_sidecar,
    sidecar_path,
)
from pipeline.media.transcripts import (
    MAX_WINDOW_TEXT_BYTES,
    Cue,
    Transcript,
    read_text_file,
    text_for_window,
)

SRT = """1
00:00:00,500 --> 00:00:01,250
Hello <i>there</i>,
general {\\an8}Kenobi!

2
00:00:02,000 --> 00:00:03,000
<font color="#ff0000">second</font>   cue

3
00:00:03,500 --> 00:00:03,900
<b></b>
"""

VTT = """WEBVTT
Kind: captions
Language: en

STYLE
::cue { color: yellow }

NOTE a comment that is not a cue

intro
00:01.500 --> 00:02.750 align:start position:10%
<v Bob>Hi <c.yellow>Alice</c> &amp; <00:02.000>friends</v>

00:00:04.000 --> 00:00:05.000
Bye
"""


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# -- read_text_file ------------------------------------------------------------------------------

ACCENTED = "café naïve — 5 €\n"


@pytest.mark.parametrize(
    ("bom", "encoding"),
    [(codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
     (codecs.BOM_UTF16_BE, "utf-16-be"), (codecs.BOM_UTF32_LE, "utf-32-le"), (b"", "utf-8")],
)
def test_read_text_file_decodes_boms_and_utf8(tmp_path: Path, bom: bytes, encoding: str) -> None:
    path = tmp_path / "t.srt"
    path.write_bytes(bom + ACCENTED.encode(encoding))
    assert read_text_file(path) == ACCENTED


def test_read_text_file_falls_back_to_cp1252(tmp_path: Path) -> None:
    path = tmp_path / "legacy.srt"
    raw = ACCENTED.encode("cp1252")
    assert raw == b"caf\xe9 na\xefve \x97 5 \x80\n"  # not valid UTF-8
    path.write_bytes(raw)
    assert read_text_file(path) == ACCENTED


def test_read_text_file_normalises_newlines(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"a\r\nb\rc\nd")
    assert read_text_file(path) == "a\nb\nc\nd"


def test_read_text_file_rejects_utf16_without_bom_and_bad_bom(tmp_path: Path) -> None:
    no_bom = tmp_path / "nobom.srt"
    no_bom.write_bytes("hello".encode("utf-16-le"))
    with pytest.raises(TranscriptError, match="nobom.srt.*NUL"):
        read_text_file(no_bom)
    truncated = tmp_path / "odd.srt"
    truncated.write_bytes(codecs.BOM_UTF16_LE + b"a\x00b")
    with pytest.raises(TranscriptError, match="odd.srt.*utf-16-le"):
        read_text_file(truncated)
    with pytest.raises(TranscriptError, match="missing.srt"):
        read_text_file(tmp_path / "missing.srt")


# -- parsing ------------------------------------------------------------------------------------


def test_srt_times_and_markup_stripped(tmp_path: Path) -> None:
    transcript = load_sidecar(write(tmp_path / "v.srt", SRT))
    assert transcript.source == "srt" and transcript.timed
    assert transcript.cues == [
        Cue(0.5, 1.25, "Hello there, general Kenobi!"),
        Cue(2.0, 3.0, "second cue"),  # cue 3 held only markup: dropped
    ]


def test_srt_in_utf16_and_cp1252(tmp_path: Path) -> None:
    text = "1\n00:00:01,000 --> 00:00:02,000\ncafé — 5 €\n"
    utf16 = tmp_path / "a.srt"
    utf16.write_bytes(codecs.BOM_UTF16_BE + text.replace("\n", "\r\n").encode("utf-16-be"))
    legacy = write(tmp_path / "b.srt", text, "cp1252")
    for path in (utf16, legacy):
        assert load_sidecar(path).cues == [Cue(1.0, 2.0, "café — 5 €")]


def test_cues_are_sorted_by_time(tmp_path: Path) -> None:
    srt = ("2\n00:00:05,000 --> 00:00:06,000\nlater\n\n"
           "1\n00:00:01,000 --> 00:00:02,000\nearlier\n")
    assert [c.text for c in load_sidecar(write(tmp_path / "v.srt", srt)).cues] == [
        "earlier", "later"]


def test_vtt_times_markup_and_non_cue_blocks(tmp_path: Path) -> None:
    transcript = load_sidecar(write(tmp_path / "v.vtt", VTT))
    assert transcript.source == "vtt" and transcript.timed
    assert transcript.cues == [Cue(1.5, 2.75, "Hi Alice & friends"), Cue(4.0, 5.0, "Bye")]


def test_txt_is_untimed_with_whitespace_collapsed(tmp_path: Path) -> None:
    transcript = load_sidecar(write(tmp_path / "v.TXT", "  Hello\n\n  world\tagain \n"))
    assert transcript.source == "txt" and not transcript.timed
    assert [c.text for c in transcript.cues] == ["Hello world again"]


@pytest.mark.parametrize("name", ["v.srt", "v.vtt", "v.txt"])
def test_empty_files_give_empty_transcripts(tmp_path: Path, name: str) -> None:
    text = "WEBVTT\n" if name.endswith(".vtt") else "\n"
    assert load_sidecar(write(tmp_path / name, text)).cues == []


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("bad.srt", "this is not\nan srt file\n", "SubRip"),
        ("bad2.srt", "1\n00:00:02,000 --> 00:00:01,000\nbackwards\n", "ends"),
        ("bad.vtt", "00:01.000 --> 00:02.000\nno header\n", "WebVTT"),
        ("bad2.vtt", "WEBVTT\n\n00:0x.000 --> 00:02.000\nbroken timing\n", "WebVTT"),
        ("bad3.vtt", "WEBVTT\n\njust some text\n", "WebVTT"),
    ],
)
def test_malformed_files_raise_naming_the_file(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    with pytest.raises(TranscriptError, match=rf"{name}.*{reason}"):
        load_sidecar(write(tmp_path / name, text))


def test_unsupported_extension_raises(tmp_path: Path) -> None:
    with pytest.raises(TranscriptError, match="notes.ass"):
        load_sidecar(write(tmp_path / "notes.ass", "x"))


def test_a_fifo_is_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "v.srt"
    os.mkfifo(fifo)
    raised: list[BaseException] = []

    def load() -> None:
        try:
            load_sidecar(fifo)
        except BaseException as err:
            raised.append(err)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # blocked in open(): give it a writer so that the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail("opening a FIFO sidecar blocked until a writer came")
    assert len(raised) == 1 and isinstance(raised[0], TranscriptError)
    assert str(raised[0]) == f"{fifo} is a FIFO, not a regular file; not read"
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    assert sidecar_path(video) is None  # nor is it taken for the video's sidecar


def test_a_folder_is_not_read_as_text(tmp_path: Path) -> None:
    with pytest.raises(TranscriptError, match="is a folder, not a regular file"):
        read_text_file(tmp_path)


def test_a_sparse_1gb_sidecar_is_refused_without_reading_it(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    with open(tmp_path / "v.srt", "wb") as handle:
        handle.truncate(1 << 30)
    with pytest.raises(TranscriptError, match=r"^v\.srt is 1073\.7 MB, over the 20 MB a "
                                              r"transcript may take; not read$"):
        find_transcript(video)


def test_a_sidecar_symlink_out_of_the_input_folder_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "in", tmp_path / "outside"
    (root / "talk").mkdir(parents=True)
    outside.mkdir()
    write(outside / "shadow", "root:secret\n")
    video = root / "talk" / "v.mp4"
    video.write_bytes(b"")
    (root / "talk" / "v.txt").symlink_to(outside / "shadow")
    with pytest.raises(TranscriptError) as caught:
        find_transcript(video, root=root)
    message = str(caught.value)
    assert message.startswith("talk/v.txt leads out of the input folder through a symlink")
    assert "--follow-symlinks" in message and str(outside) not in message
    followed = find_transcript(video, root=root, follow_symlinks=True)
    assert followed.cues == [Cue(0.0, 0.0, "root:secret")]
    # A symlink that stays inside the input folder is read as any file.
    (root / "talk" / "v.txt").unlink()
    write(root / "shared.srt", "1\n00:00:01,000 --> 00:00:02,000\nshared\n")
    (root / "talk" / "v.srt").symlink_to(root / "shared.srt")
    assert find_transcript(video, root=root).cues == [Cue(1.0, 2.0, "shared")]


def test_messages_name_files_relative_to_the_input_folder(
    tmp_path: Path, videos: dict[str, Path]
) -> None:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    video = root / "sub" / "v.mp4"
    video.write_bytes(b"")
    write(root / "sub" / "v.srt", "garbage\n")
    with pytest.raises(TranscriptError, match=r"^sub/v\.srt: malformed SubRip"):
        find_transcript(video, root=root)
    movie = root / "sub" / "movie.mkv"
    movie.write_bytes(videos["srt"].read_bytes())
    with pytest.raises(TranscriptError, match=r"^sub/movie\.mkv: ffmpeg could not extract"):
        find_transcript(movie, "false", root=root)


@pytest.mark.parametrize(("name", "text"), [
    ("v.srt", "".join(f"{i}\n00:00:0{i},000 --> 00:00:0{i},500\nw{i}\n\n" for i in range(1, 5))),
    ("v.vtt", "WEBVTT\n\n" + "".join(f"00:0{i}.000 --> 00:0{i}.500\nw{i}\n\n"
                                    for i in range(1, 5))),
])
def test_too_many_cues_raise_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            name: str, text: str) -> None:
    monkeypatch.setattr(subtitles, "MAX_CUES", 3)
    with pytest.raises(TranscriptError, match=rf"{name}: 4 cues, over the 3 a transcript may "
                                              rf"have; its text is dropped"):
        load_sidecar(write(tmp_path / name, text))
    monkeypatch.setattr(subtitles, "MAX_CUES", 4)
    assert len(load_sidecar(tmp_path / name).cues) == 4


def test_a_sidecar_of_short_words_takes_bounded_memory(tmp_path: Path) -> None:
    # ~20 MB of two-letter words: a list of them (6.6 million strings) took 800 MB.
    path = write(tmp_path / "v.txt", "ab " * 6_600_000)
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from pipeline.media.subtitles import load_sidecar\n"
            "from pipeline.media.transcripts import text_for_window\n"
            "def peak():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'):\n"
            "            return int(line.split()[1]) // 1024\n"
            "before = peak()\n"
            "transcript = load_sidecar(Path(sys.argv[1]))\n"
            "text_for_window(transcript, 0.0, 2.0, 3600.0)\n"
            "print(peak() - before)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, check=True, timeout=120)
    assert int(done.stdout) < 300, f"{done.stdout.strip()} MB over the interpreter's"


def test_collapse_whitespace_is_split_and_join() -> None:
    spaces = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
    text = f"{spaces}a{spaces}bb  c\n\nd{' ' * 1000}é{spaces}"
    assert collapse_whitespace(text) == " ".join(text.split()) == "a bb c d é"


# -- windows ------------------------------------------------------------------------------------
def test_window_text_is_cut_at_a_character_boundary() -> None:
    euros = Transcript([Cue(0.0, 10.0, "€" * 2000)], "srt")  # 3 bytes each: 6000 bytes
    cut = text_for_window(euros, 0.0, 2.0, 10.0)
    assert cut.cut and cut.text == "€" * (MAX_WINDOW_TEXT_BYTES // 3)
    many = Transcript([Cue(i / 10, 10.0, "word" * 100) for i in range(50)], "srt")
    cut = text_for_window(many, 5.0, 7.0, 10.0)
    assert cut.cut and len(cut.text.encode()) == MAX_WINDOW_TEXT_BYTES
    assert cut.text.startswith("word" * 100 + " ")
    exact = Transcript([Cue(0.0, 1.0, "a" * MAX_WINDOW_TEXT_BYTES)], "srt")
    assert text_for_window(exact, 0.0, 2.0, 10.0) == ("a" * MAX_WINDOW_TEXT_BYTES, False)
    untimed = Transcript([Cue(0.0, 0.0, "ab " * 100_000)], "txt", timed=False)
    first = text_for_window(untimed, 0.0, 1.0, 2.0)
    assert first.cut and first.text == ("ab " * 2000)[:MAX_WINDOW_TEXT_BYTES].rstrip()


def test_embedded_stream_over_the_size_limit_is_not_read(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subtitles, "MAX_TRANSCRIPT_BYTES", 40)
    with pytest.raises(TranscriptError, match=r"subrip\.mkv \(subtitle stream 1\): over "
                                              r"4e-05 MB of subtitles"):
        extract_embedded(videos["srt"])



def test_overlap_rule_is_strict_on_both_ends() -> None:
    transcript = Transcript([Cue(2.0, 3.0, "cue")], "srt")
    assert text_for_window(transcript, 1.0, 3.0, 10.0).text == "cue"
    assert text_for_window(transcript, 2.0, 4.0, 10.0).text == "cue"
    assert text_for_window(transcript, 2.5, 2.6, 10.0).text == "cue"
    assert text_for_window(transcript, 0.0, 2.0, 10.0).text == ""
    assert text_for_window(transcript, 3.0, 5.0, 10.0).text == ""


def test_window_joins_overlapping_cues_in_time_order() -> None:
    transcript = Transcript(
        [Cue(0.0, 1.5, "one"), Cue(1.0, 2.5, "two"), Cue(2.5, 4.0, "three")], "vtt")
    assert text_for_window(transcript, 1.0, 3.0, 4.0).text == "one two three"
    assert text_for_window(transcript, 2.0, 2.5, 4.0).text == "two"
    assert text_for_window(Transcript([], "none"), 0.0, 2.0, 4.0).text == ""


def test_untimed_words_spread_by_character_position() -> None:
    # "aaa bb c dddd" has 13 characters; words start at characters 0, 4, 7 and 9, so over a
    # 13 s video they are placed at 0, 4, 7 and 9 s.
    transcript = Transcript([Cue(0.0, 0.0, "aaa bb c dddd")], "txt", timed=False)
    assert text_for_window(transcript, 0.0, 4.0, 13.0).text == "aaa"
    assert text_for_window(transcript, 4.0, 7.0, 13.0).text == "bb"
    assert text_for_window(transcript, 7.0, 9.0, 13.0).text == "c"
    assert text_for_window(transcript, 9.0, 13.0, 13.0).text == "dddd"
    assert text_for_window(transcript, 0.0, 7.5, 13.0).text == "aaa bb c"
    # Over a 6.5 s video the same words are placed at 0, 2, 3.5 and 4.5 s.
    assert text_for_window(transcript, 0.0, 4.0, 6.5).text == "aaa bb c"


def test_untimed_tiling_windows_share_out_every_word_once() -> None:
    words = [f"w{i}" * (1 + i % 5) for i in range(300)]
    transcript = Transcript([Cue(0.0, 0.0, " ".join(words))], "txt", timed=False)
    duration = 61.3
    pieces = [text_for_window(transcript, float(s), float(s + 1), duration).text
              for s in range(62)]
    assert " ".join(p for p in pieces if p).split() == words


def test_untimed_needs_a_positive_duration() -> None:
    transcript = Transcript([Cue(0.0, 0.0, "words")], "txt", timed=False)
    with pytest.raises(ValueError, match="video_duration"):
        text_for_window(transcript, 0.0, 1.0, 0.0)
    assert text_for_window(Transcript([], "txt", timed=False), 0.0, 1.0, 0.0).text == ""


# -- sidecar lookup -----------------------------------------------------------------------------


def test_sidecar_precedence_srt_vtt_txt(tmp_path: Path) -> None:
    video = tmp_path / "talk.mp4"
    video.write_bytes(b"")
    write(tmp_path / "talk.txt", "plain words")
    assert find_transcript(video).source == "txt"
    write(tmp_path / "talk.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\nfrom vtt\n")
    assert find_transcript(video).source == "vtt"
    write(tmp_path / "talk.srt", "1\n00:00:01,000 --> 00:00:02,000\nfrom srt\n")
    assert find_transcript(video).cues[0].text == "from srt"


def test_sidecar_extension_is_case_insensitive_and_stem_exact(tmp_path: Path) -> None:
    video = tmp_path / "my talk.v2.MP4"
    video.write_bytes(b"")
    write(tmp_path / "my talk.v2.SrT", "1\n00:00:01,000 --> 00:00:02,000\nyes\n")
    write(tmp_path / "my talk.srt", "1\n00:00:01,000 --> 00:00:02,000\nother video\n")
    write(tmp_path / "my talk.v2x.srt", "1\n00:00:01,000 --> 00:00:02,000\nother video\n")
    (tmp_path / "my talk.v2.vtt").mkdir()  # a folder, not a sidecar
    transcript = find_transcript(video)
    assert transcript.source == "srt" and transcript.cues[0].text == "yes"


def test_language_tagged_sidecars(tmp_path: Path) -> None:
    video = tmp_path / "clip.webm"
    video.write_bytes(b"")
    write(tmp_path / "clip.notes.txt", "not a transcript")
    write(tmp_path / "clip.txt", "untimed")
    write(tmp_path / "clip.fr.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\nbonjour\n")
    assert find_transcript(video).cues[0].text == "bonjour"  # timed beats untimed
    write(tmp_path / "clip.en.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\nhello\n")
    assert find_transcript(video).cues[0].text == "hello"  # first by name
    write(tmp_path / "clip.de.srt", "1\n00:00:01,000 --> 00:00:02,000\nhallo\n")
    assert find_transcript(video).cues[0].text == "hallo"  # .srt beats .vtt
    write(tmp_path / "clip.srt", "1\n00:00:01,000 --> 00:00:02,000\nexact\n")
    assert find_transcript(video).cues[0].text == "exact"  # exact name beats tagged


def test_broken_sidecar_raises_instead_of_falling_back(tmp_path: Path) -> None:
    video = tmp_path / "v.mkv"
    video.write_bytes(b"")
    write(tmp_path / "v.srt", "garbage\n")
    with pytest.raises(TranscriptError, match="v.srt"):
        find_transcript(video)


# -- embedded subtitles -------------------------------------------------------------------------

EMBED_SRT = ("1\n00:00:00,500 --> 00:00:01,500\n<i>First</i> line\n\n"
             "2\n00:00:02,000 --> 00:00:03,250\nSecond — café\n")


def make_video(folder: Path, name: str, subtitle_codec: str | None) -> Path:
    """A 4 s 64x64 black video, with the EMBED_SRT cues as a `subtitle_codec` stream."""
    out = folder / name
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
               "-f", "lavfi", "-i", "color=c=black:s=64x64:d=4:r=8"]
    if subtitle_codec is not None:
        subs = write(folder / f"{name}.src.srt", EMBED_SRT)
        command += ["-i", str(subs), "-map", "0:v", "-map", "1:s", "-c:s", subtitle_codec]
    command += ["-c:v", "mpeg4", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("embedded")
    return {
        "srt": make_video(folder, "subrip.mkv", "srt"),
        "ass": make_video(folder, "ass.mkv", "ass"),
        "mov_text": make_video(folder, "movtext.mp4", "mov_text"),
        "webvtt": make_video(folder, "webvtt.mkv", "webvtt"),
        "none": make_video(folder, "nosubs.mkv", None),
    }


@pytest.mark.parametrize("kind", ["srt", "ass", "mov_text", "webvtt"])
def test_embedded_text_subtitles(videos: dict[str, Path], kind: str) -> None:
    transcript = extract_embedded(videos[kind])
    assert transcript is not None
    assert transcript.source == "embedded" and transcript.timed
    assert transcript.cues == [Cue(0.5, 1.5, "First line"), Cue(2.0, 3.25, "Second — café")]


def test_no_subtitle_stream_gives_none(videos: dict[str, Path]) -> None:
    assert extract_embedded(videos["none"]) is None
    assert find_transcript(videos["none"]) == Transcript([], "none", timed=True)


def test_find_transcript_uses_embedded_then_prefers_sidecar(
    videos: dict[str, Path], tmp_path: Path
) -> None:
    video = tmp_path / "movie.mkv"
    video.write_bytes(videos["srt"].read_bytes())
    assert find_transcript(video).source == "embedded"
    write(tmp_path / "movie.srt", "1\n00:00:09,000 --> 00:00:10,000\nsidecar\n")
    assert find_transcript(video).cues == [Cue(9.0, 10.0, "sidecar")]


def test_unreadable_container_raises_decode_error(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="junk.mkv"):
        extract_embedded(write(tmp_path / "junk.mkv", "not a video"))


def test_failing_ffmpeg_raises_transcript_error(videos: dict[str, Path]) -> None:
    with pytest.raises(TranscriptError, match="subrip.mkv"):
        extract_embedded(videos["srt"], ffmpeg_binary="false")


def test_text_and_bitmap_codecs() -> None:
    for name in ("subrip", "ass", "ssa", "mov_text", "webvtt", "text"):
        assert _is_text_codec(name)
    for name in ("dvd_subtitle", "hdmv_pgs_subtitle", "dvb_subtitle", "no_such_codec"):
        assert not _is_text_codec(name)


# -- ffmpeg binary ------------------------------------------------------------------------------


def test_ffmpeg_binary_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ffmpeg_bin.ENV_VAR, raising=False)
    bundled = imageio_ffmpeg.get_ffmpeg_exe()
    assert ffmpeg_bin.ffmpeg_binary() == bundled
    monkeypatch.setenv(ffmpeg_bin.ENV_VAR, bundled)
    assert ffmpeg_bin.ffmpeg_binary() == bundled
    monkeypatch.setenv(ffmpeg_bin.ENV_VAR, "/no/such/ffmpeg")
    with pytest.raises(PipelineError, match="OMNI_FFMPEG"):
        ffmpeg_bin.ffmpeg_binary()
