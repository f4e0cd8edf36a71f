"""`data download`: a local HTTP server on 127.0.0.1 serves archives made here (right md5, wrong
md5, truncated, cut off mid-transfer, path traversal); each outcome is checked, and a refused
file leaves nothing unpacked. No test connects anywhere but 127.0.0.1."""

from __future__ import annotations

import hashlib
import io as bytes_io
import json
import os
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3.util.connection

from mritumor.cli import main
from mritumor.data.acquire.archives import UnsafeArchiveError, safe_unpack
from mritumor.data.acquire.download import SOURCES, download_figshare, parse_listing
from mritumor.data.reading.readers import read_catalog
from mritumor.errors import DataError
from test_convert import write_figshare_release, write_lgg_release

ZIP_NAME = "brainTumorDataPublic_1-5.zip"


class Files:
    """What the server serves, how it misbehaves, and what it was asked."""

    def __init__(self):
        self.bodies: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # path → bytes sent before the connection drops (once)
        self.ignore_range: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []


def handler_for(files: Files):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            asked = self.headers.get("Range")
            files.requests.append((self.path, asked))
            body = files.bodies.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if asked and self.path not in files.ignore_range:
                start = int(re.match(r"bytes=(\d+)-", asked).group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            rest = body[start:]
            self.send_header("Content-Length", str(len(rest)))  # promises all of it
            self.end_headers()
            self.wfile.write(rest[: files.cut.pop(self.path, len(rest))])

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture(autouse=True)
def only_localhost(monkeypatch):
    """Any connection to another host fails the test; proxies are bypassed."""
    real = urllib3.util.connection.create_connection

    def guarded(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"a test tried to reach {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("MRITUMOR_MIRROR", raising=False)


@pytest.fixture
def server():
    files = Files()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(files))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    files.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield files
    httpd.shutdown()
    httpd.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def zip_of(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = bytes_io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symbolic link, as Unix zip stores one
            archive.writestr(info, target)
    return buffer.getvalue()


def release(tmp_path: Path, size: int = 64) -> dict[str, bytes]:
    """The Figshare release in small: one zip of N.mat slices and cvind.mat."""
    root = write_figshare_release(tmp_path / "made", size=size)
    slices = {p.name: p.read_bytes() for p in sorted(root.glob("[0-9]*.mat"))}
    return {ZIP_NAME: zip_of(slices), "cvind.mat": (root / "cvind.mat").read_bytes()}


def serve(server: Files, files: dict[str, bytes], listed: dict[str, bytes] | None = None,
          prefix: str = "/mirror") -> None:  # fmt: skip
    """Serve ``files`` under prefix and a listing whose md5/size describe ``listed`` (default:
    the files themselves) as ``prefix/files.json`` and the API path."""
    listed = listed or files
    listing = []
    for number, (name, data) in enumerate(files.items(), 1):
        server.bodies[f"{prefix}/{name}"] = data
        server.bodies[f"/ndownloader/files/{number}"] = data
        listing.append(
            {
                "id": number,
                "name": name,
                "size": len(listed[name]),
                "is_link_only": False,
                "download_url": f"{server.url}/ndownloader/files/{number}",
                "supplied_md5": md5(listed[name]),
                "computed_md5": md5(listed[name]),
            }
        )
    server.bodies[f"{prefix}/files.json"] = json.dumps(listing).encode()
    server.bodies["/v2/articles/1512427/files"] = json.dumps(listing).encode()


def get(out: Path, server: Files, retries: int = 0):
    return download_figshare(
        out, base_url=f"{server.url}/mirror", progress=False, retries=retries, wait=0
    )


def unpacked(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if "downloads" not in p.parts)


def test_api_listing_download_verifies_unpacks_and_reads(tmp_path: Path, server: Files):
    files = release(tmp_path)
    serve(server, files)
    out = tmp_path / "data"
    result = download_figshare(
        out, listing_url=f"{server.url}/v2/articles/1512427/files", progress=False, retries=0
    )
    assert sorted(result.transferred) == sorted(files)
    assert sorted(p.name for p in result.unpacked) == ["1.mat", "2.mat", "3.mat", "4.mat",
                                                        "5.mat", "cvind.mat"]  # fmt: skip
    with zipfile.ZipFile(out / "downloads" / ZIP_NAME) as archive:
        assert (out / "3.mat").read_bytes() == archive.read("3.mat")
    catalog = read_catalog(out)
    assert (catalog.source, len(catalog), len(catalog.patients)) == ("figshare_mat", 5, 3)
    assert catalog.table.set_index("figshare_index").loc[4, "fold"] == 3  # cvind.mat was read
    paths = [p for p, _ in server.requests]
    assert "/ndownloader/files/1" in paths and not any(p.startswith("/mirror") for p in paths)
    # a second run checks the md5 of what is there and transfers nothing but the listing
    server.requests.clear()
    again = download_figshare(
        out, listing_url=f"{server.url}/v2/articles/1512427/files", progress=False
    )
    assert again.transferred == [] and again.unpacked == [] and len(again.verified) == 2
    assert [p for p, _ in server.requests] == ["/v2/articles/1512427/files"]


def test_mirror_from_the_environment_through_the_command(
    tmp_path: Path, server: Files, monkeypatch, capsys
):
    serve(server, release(tmp_path))
    monkeypatch.setenv("MRITUMOR_MIRROR", f"{server.url}/mirror/")
    out = tmp_path / "data"
    assert main(["-q", "data", "download", "figshare", "--out", str(out)]) == 0
    assert "2 file(s) verified by md5" in capsys.readouterr().out
    assert all(p.startswith("/mirror/") for p, _ in server.requests)
    assert len(read_catalog(out)) == 5


def test_wrong_checksum_is_refused_with_both_and_nothing_unpacked(tmp_path: Path, server: Files):
    files = release(tmp_path)
    other = {**files, ZIP_NAME: zip_of({"1.mat": b"another file"})}
    serve(server, files, listed=other)
    with pytest.raises(DataError) as error:
        get(tmp_path / "data", server)
    message = str(error.value)
    assert ZIP_NAME in message and md5(files[ZIP_NAME]) in message
    assert md5(other[ZIP_NAME]) in message
    assert unpacked(tmp_path / "data") == []
    assert sorted(os.listdir(tmp_path / "data/downloads")) == ["files.json"]


def test_truncated_file_is_refused_and_nothing_unpacked(tmp_path: Path, server: Files):
    files = release(tmp_path)
    half = len(files[ZIP_NAME]) // 2
    serve(server, {**files, ZIP_NAME: files[ZIP_NAME][:half]}, listed=files)
    with pytest.raises(DataError, match=f"{half} bytes of the {len(files[ZIP_NAME])} listed"):
        get(tmp_path / "data", server)
    assert unpacked(tmp_path / "data") == []
    assert not list((tmp_path / "data/downloads").glob("*.zip*"))


def test_interrupted_transfer_is_kept_then_resumed(tmp_path: Path, server: Files):
    files = release(tmp_path, size=256)  # several 64 KiB chunks
    serve(server, files)
    third = len(files[ZIP_NAME]) // 3
    server.cut[f"/mirror/{ZIP_NAME}"] = third
    out = tmp_path / "data"
    with pytest.raises(DataError, match="resume"):
        get(out, server)  # no retries: the broken transfer ends this run
    part = out / "downloads" / f"{ZIP_NAME}.part"
    kept = part.read_bytes()  # the whole chunks received before the break
    assert 0 < len(kept) <= third and kept == files[ZIP_NAME][: len(kept)]
    assert unpacked(out) == []
    server.requests.clear()
    result = get(out, server)
    assert (f"/mirror/{ZIP_NAME}", f"bytes={len(kept)}-") in server.requests
    assert ZIP_NAME in result.transferred and not part.exists()
    assert (out / "downloads" / ZIP_NAME).read_bytes() == files[ZIP_NAME]
    assert len(read_catalog(out)) == 5


def test_retries_resume_within_one_run(tmp_path: Path, server: Files):
    files = release(tmp_path, size=256)
    serve(server, files)
    server.cut[f"/mirror/{ZIP_NAME}"] = 200_000
    get(tmp_path / "data", server, retries=1)
    assert (f"/mirror/{ZIP_NAME}", f"bytes={3 * 65536}-") in server.requests
    assert (tmp_path / "data/downloads" / ZIP_NAME).read_bytes() == files[ZIP_NAME]


def test_a_server_ignoring_range_sends_the_whole_file_again(tmp_path: Path, server: Files):
    files = release(tmp_path)
    serve(server, files)
    server.ignore_range.add(f"/mirror/{ZIP_NAME}")
    downloads = tmp_path / "data/downloads"
    downloads.mkdir(parents=True)
    (downloads / f"{ZIP_NAME}.part").write_bytes(b"stale bytes of an older try")
    get(tmp_path / "data", server)
    assert (downloads / ZIP_NAME).read_bytes() == files[ZIP_NAME]


@pytest.mark.parametrize(
    "entries, links, reason",
    [
        ({"../escape.mat": b"x"}, None, "climbs out"),
        ({"/tmp/escape.mat": b"x"}, None, "absolute"),
        ({"sub/../../escape.mat": b"x"}, None, "climbs out"),
        ({}, {"link.mat": "/etc/passwd"}, "link"),
    ],
)
def test_path_traversal_refuses_the_whole_archive(
    tmp_path: Path, server: Files, entries, links, reason
):
    files = release(tmp_path)
    bad = zip_of({"1.mat": b"a good entry first", **entries}, links)
    serve(server, {**files, ZIP_NAME: bad})  # listed with its own (right) md5
    out = tmp_path / "deep/data"
    with pytest.raises(UnsafeArchiveError, match=reason):
        get(out, server)
    assert unpacked(out) == []  # not even the good entry, nor the staging folder
    assert not list(tmp_path.rglob("escape.mat")) and not (out / "link.mat").exists()


def tar_of(add) -> bytes:
    buffer = bytes_io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        good = tarfile.TarInfo("ok/1.mat")
        good.size = 4
        archive.addfile(good, bytes_io.BytesIO(b"good"))
        add(archive)
    return buffer.getvalue()


def _member(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member, reason",
    [
        (_member("ok/passwd", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_member("ok/hard", tarfile.LNKTYPE, "ok/1.mat"), "link"),
        (_member("ok/pipe", tarfile.FIFOTYPE), "special file"),
        (_member("../up.mat", tarfile.REGTYPE), "climbs out"),
    ],
)
def test_tar_links_devices_and_climbing_are_refused(tmp_path: Path, member, reason):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(tar_of(lambda a: a.addfile(member, bytes_io.BytesIO(b""))))
    with pytest.raises(UnsafeArchiveError, match=reason):
        safe_unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before the folder was even made


def test_safe_unpack_writes_a_good_tar_and_refuses_a_link_in_the_destination(tmp_path: Path):
    archive = tmp_path / "good.tar.gz"
    archive.write_bytes(tar_of(lambda a: None))
    assert safe_unpack(archive, tmp_path / "out") == [tmp_path / "out/ok/1.mat"]
    assert (tmp_path / "out/ok/1.mat").read_bytes() == b"good"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2/ok").symlink_to(elsewhere)  # a link already in the destination
    with pytest.raises(UnsafeArchiveError, match="through a link"):
        safe_unpack(archive, tmp_path / "out2")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"name": "../evil.zip"}, "not a plain file name"),
        ({"name": "sub/evil.zip"}, "not a plain file name"),
        ({"computed_md5": "", "supplied_md5": None}, "no md5"),
        ({"download_url": "file:///etc/passwd"}, "no http"),
    ],
)
def test_listing_entries_that_cannot_be_checked_are_refused(change, reason):
    entry = {"name": "cvind.mat", "size": 3, "download_url": "https://example.invalid/1",
             "computed_md5": md5(b"abc")}  # fmt: skip
    assert parse_listing(json.dumps([entry]), "listing")[0].md5 == md5(b"abc")
    with pytest.raises(DataError, match=reason):
        parse_listing(json.dumps([{**entry, **change}]), "listing")


def test_list_names_every_source_with_licence_and_citation(capsys):
    assert main(["data", "download", "--list"]) == 0
    text = capsys.readouterr().out
    for name in SOURCES:
        assert re.search(rf"^{name} ", text, re.M)
    for needle in ("CC BY 4.0", "Cheng et al.", "Buda", "TCIA data-usage", "Clark et al."):
        assert needle in text


def test_account_sources_show_the_steps_then_check_the_layout(tmp_path: Path, capsys):
    out = tmp_path / "lgg"
    assert main(["-q", "data", "download", "lgg_kaggle", "--out", str(out)]) == 2
    steps = capsys.readouterr().out
    assert "kaggle datasets download -d mateuszbuda/lgg-mri-segmentation" in steps
    assert f"{out}/kaggle_3m/data.csv" in steps
    write_lgg_release(out)
    assert main(["-q", "data", "download", "lgg_kaggle", "--out", str(out)]) == 0
    assert "3 patients, 9 slices read as --format lgg_kaggle; ready" in capsys.readouterr().out
    assert main(["-q", "data", "download", "tcia", "--out", str(out)]) == 2  # not a DICOM tree
    assert "not folder or manifest" in capsys.readouterr().out


def test_unknown_source_missing_out_and_odd_mirror_are_clear_errors(tmp_path: Path, capsys):
    assert main(["data", "download", "imagenet", "--out", "x"]) == 2
    assert "unknown source 'imagenet'" in capsys.readouterr().err
    assert main(["data", "download", "figshare"]) == 2
    assert "--out is required" in capsys.readouterr().err
    command = ["data", "download", "figshare", "--out", str(tmp_path / "d")]
    assert main(command + ["--base_url", "ftp://127.0.0.1/x"]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err
