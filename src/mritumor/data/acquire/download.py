"""Getting the public datasets the readers support, checked before anything is unpacked.

The Figshare brain-tumour release is downloaded through ``pooch``: the file listing comes from
the Figshare API at run time (names, download URLs and md5 as the API gives them), becomes a
pooch registry, and each file is fetched with :class:`ResumableDownloader` (an interrupted
transfer continues where it stopped on the next try or run) and verified against the
listing's md5 by pooch before :func:`~mritumor.data.acquire.archives.safe_unpack` touches it. A file
that does not match is deleted and named with both checksums; nothing of it is unpacked.

A mirror (``base_url`` or the ``MRITUMOR_MIRROR`` environment variable) is any HTTP folder
that serves the listing as ``files.json`` and the files under their own names: the
``downloads/`` folder this module writes is such a folder.

Sources that need an account (the Kaggle LGG release, TCIA) cannot be fetched here: their
:attr:`Source.steps` say exactly what to do and where to place the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tqdm.auto import tqdm

from mritumor.data.acquire.archives import is_archive, safe_unpack
from mritumor.errors import DataError
from mritumor.resources import check_free_space, check_writable

log = logging.getLogger(__name__)

FIGSHARE_ARTICLE = 1512427
FIGSHARE_LISTING = f"https://api.figshare.com/v2/articles/{FIGSHARE_ARTICLE}/files"
MIRROR_ENV = "MRITUMOR_MIRROR"
LISTING_NAME = "files.json"
DOWNLOADS = "downloads"  # sub-folder of --out holding the verified files (a mirror itself)
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_SAFE_NAME = re.compile(r"^[\w][\w .+\-]*$")


@dataclass(frozen=True)
class Source:
    name: str
    title: str
    reader: str  # the --format the data is read with
    licence: str
    citation: str
    downloadable: bool
    steps: str = ""  # account-only sources: what to do; {out} is the --out folder


SOURCES = {
    "figshare": Source(
        "figshare",
        "Figshare brain tumour dataset (Cheng et al.): 3064 T1-CE slices, 233 patients, "
        "meningioma / glioma / pituitary, tumour masks, 5-fold cvind.mat",
        "figshare_mat",
        "CC BY 4.0 (doi 10.6084/m9.figshare.1512427)",
        "J. Cheng et al., Enhanced performance of brain tumor classification via tumor region "
        "augmentation and partition, PLoS ONE 2015; J. Cheng et al., Retrieval of brain tumors "
        "by adaptive spatial pooling and Fisher vector representation, PLoS ONE 2016",
        True,
    ),
    "lgg_kaggle": Source(
        "lgg_kaggle",
        "TCGA-LGG segmentation dataset (Buda et al., Kaggle kaggle_3m): 110 patients, "
        "pre-contrast T1 / FLAIR / post-contrast T1 slices, FLAIR masks, type and grade",
        "lgg_kaggle",
        "TCIA data-usage terms (images from TCIA TCGA-LGG)",
        "M. Buda, A. Saha, M. A. Mazurowski, Association of genomic subtypes of lower-grade "
        "gliomas with shape features automatically extracted by a deep learning algorithm, "
        "Computers in Biology and Medicine 2019; M. A. Mazurowski et al., J Neurooncol 2017",
        False,
        """The Kaggle release needs a (free) Kaggle account:
  1. sign in at kaggle.com and open the dataset mateuszbuda/lgg-mri-segmentation;
  2. download it, either with the page's Download button, or with Kaggle's client:
       pip install kaggle    (then put your API token in ~/.kaggle/kaggle.json)
       kaggle datasets download -d mateuszbuda/lgg-mri-segmentation -p {out}
  3. unzip it in {out} so that the case folders and data.csv lie in {out}/kaggle_3m:
       {out}/kaggle_3m/data.csv
       {out}/kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1.tif
       {out}/kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1_mask.tif
       ...
  4. run this command again: it checks the layout (or: mritumor data inspect --data_root {out})""",
    ),
    "tcia": Source(
        "tcia",
        "The Cancer Imaging Archive collections (e.g. TCGA-LGG, TCGA-GBM) as DICOM series",
        "folder",
        "TCIA data-usage policy and the collection's own licence (see its page)",
        "the citation given on the collection's page; K. Clark et al., The Cancer Imaging "
        "Archive (TCIA): maintaining and operating a public information repository, "
        "J Digit Imaging 2013",
        False,
        """TCIA images are downloaded with TCIA's own tool (an account for restricted collections):
  1. on cancerimagingarchive.net open the collection (e.g. TCGA-LGG) and download its .tcia
     manifest, and the clinical data that give each patient's tumour type and grade;
  2. open the manifest with the NBIA Data Retriever and download into a staging folder;
  3. place ONE series per patient (e.g. the FLAIR or post-contrast T1 series) as the folder
     tree, class folders named <type>[-g<grade>] from the clinical data:
       {out}/astrocytoma-g2/TCGA-CS-4941/*.dcm
       {out}/oligodendroglioma-g3/TCGA-DU-5851/*.dcm
     or list the files in {out}/manifest.csv (image, mask, patient_id, tumor_type, grade);
  4. run this command again: it checks the layout (or: mritumor data inspect --data_root {out})""",
    ),
}


def format_sources() -> str:
    """Each source with its licence and citation (``data download --list``)."""
    lines = []
    for source in SOURCES.values():
        how = "downloaded by mritumor" if source.downloadable else "needs an account: steps shown"
        lines += [
            f"{source.name}  ({how}; read as --format {source.reader})",
            f"  {source.title}",
            f"  licence:  {source.licence}",
            f"  cite:     {source.citation}",
            "",
        ]
    return "\n".join(lines).rstrip()


def manual_steps(name: str, out: str | Path) -> str:
    return SOURCES[name].steps.format(out=Path(out))


def manual_source_catalog(name: str, out: str | Path):
    """(catalog, None) when an account-only source's files are in place in ``out`` and read as
    that source; else (None, why not), the reason empty when ``out`` is absent or empty."""
    from mritumor.data.reading.readers import read_catalog

    root = Path(out)
    if not root.is_dir() or not any(root.iterdir()):
        return None, ""
    expected = (
        ("folder", "manifest") if SOURCES[name].reader == "folder" else (SOURCES[name].reader,)
    )
    try:
        catalog = read_catalog(root)
    except DataError as error:
        return None, str(error)
    if catalog.source not in expected:
        return None, f"it reads as --format {catalog.source}, not {' or '.join(expected)}"
    return catalog, None


def resolve_mirror(base_url: str | None) -> str | None:
    """``base_url`` when given, else ``$MRITUMOR_MIRROR``, without a trailing slash."""
    value = (base_url or os.environ.get(MIRROR_ENV) or "").strip().rstrip("/")
    if value and not value.startswith(("https://", "http://")):
        raise DataError(f"the mirror {value!r} is not an http(s) URL (--base_url, ${MIRROR_ENV})")
    return value or None


@dataclass(frozen=True)
class ListedFile:
    name: str
    url: str
    md5: str
    size: int | None


@dataclass
class Downloaded:
    out: Path
    verified: list[Path] = field(default_factory=list)  # every file checked against its md5
    transferred: list[str] = field(default_factory=list)  # names actually downloaded this run
    unpacked: list[Path] = field(default_factory=list)


def download_figshare(
    out: str | Path,
    base_url: str | None = None,
    listing_url: str = FIGSHARE_LISTING,
    progress: bool = True,
    retries: int = 2,
    wait: float = 1.0,
) -> Downloaded:
    """The Figshare release into ``out`` (the data root): ``N.mat`` unpacked from the zip parts,
    ``cvind.mat`` beside them, the verified files and the listing in ``out/downloads``."""
    import pooch

    pooch.get_logger().setLevel(logging.WARNING)  # its hints are about its own API
    out = check_writable(out, "download folder").absolute()
    downloads = check_writable(out / DOWNLOADS, "download folder")
    mirror = resolve_mirror(base_url)
    files = fetch_listing(downloads, f"{mirror}/{LISTING_NAME}" if mirror else listing_url)
    if mirror:
        files = [ListedFile(f.name, f"{mirror}/{quote(f.name)}", f.md5, f.size) for f in files]
    missing = [f for f in files if not (downloads / f.name).is_file()]
    check_free_space(downloads, sum(f.size or 0 for f in missing), "the download")
    store = pooch.create(
        path=downloads,
        base_url="",
        registry={f.name: f"md5:{f.md5}" for f in files},
        urls={f.name: f.url for f in files},
        retry_if_failed=0,  # network retries happen in the downloader, resuming; a bad md5 is final
    )
    result = Downloaded(out)
    for listed in files:
        downloader = ResumableDownloader(
            downloads / f"{listed.name}.part", listed.size, progress, retries, wait
        )
        try:
            path = store.fetch(
                listed.name, downloader=downloader, processor=_Placer(out, listed, result)
            )
        except ValueError as error:  # pooch's md5 check failed; it deleted the file
            raise DataError(_mismatch(listed, downloader, error)) from error
        except _request_errors() as error:
            raise DataError(
                f"downloading {listed.name} from {listed.url} failed ({error}); "
                f"{downloader.kept_message()}"
            ) from error
        result.verified.append(Path(path))
        if downloader.md5 is not None:
            result.transferred.append(listed.name)
    return result


def fetch_listing(downloads: Path, url: str) -> list[ListedFile]:
    """The listing, fetched fresh through pooch (no checksum: it is what checksums come from);
    the copy of an earlier run is used, with a warning, only when the fetch fails."""
    import pooch

    listing = downloads / LISTING_NAME
    earlier = listing.read_bytes() if listing.is_file() else None
    listing.unlink(missing_ok=True)
    try:
        pooch.retrieve(url, known_hash=None, fname=LISTING_NAME, path=downloads)
    except _request_errors() as error:
        if earlier is None:
            raise DataError(f"cannot fetch the file listing {url} ({error})") from error
        log.warning("cannot fetch %s (%s); using the listing of an earlier run", url, error)
        listing.write_bytes(earlier)
    return parse_listing(listing.read_text(encoding="utf-8", errors="replace"), url)


def parse_listing(text: str, url: str) -> list[ListedFile]:
    """Figshare's ``/articles/{id}/files`` JSON: name, size, download_url, computed_md5 (or
    supplied_md5). A name that is not a plain file name, a file without an md5 or a URL that is
    not http(s) refuses the whole listing: nothing is downloaded that cannot be checked."""
    try:
        items = json.loads(text)
    except ValueError as error:
        raise DataError(f"the file listing {url} is not JSON ({error})") from error
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise DataError(f"the file listing {url} is not a JSON list of files")
    files: dict[str, ListedFile] = {}
    for item in items:
        name = str(item.get("name", ""))
        if not _SAFE_NAME.match(name) or name in (LISTING_NAME,) or name.endswith(".part"):
            raise DataError(
                f"the file listing {url} names {name!r}, not a plain file name; refused"
            )
        if item.get("is_link_only"):
            log.warning("%s is only a link in the listing; skipped", name)
            continue
        md5 = str(item.get("computed_md5") or item.get("supplied_md5") or "")
        if not _MD5.match(md5):
            raise DataError(f"the file listing {url} gives no md5 for {name}; refused unchecked")
        link = str(item.get("download_url", ""))
        if not link.startswith(("https://", "http://")):
            raise DataError(f"the file listing {url} gives {name} no http(s) download URL")
        size = item.get("size")
        if name in files:
            raise DataError(f"the file listing {url} names {name} twice")
        files[name] = ListedFile(name, link, md5.lower(), int(size) if size is not None else None)
    return list(files.values())


class ResumableDownloader:
    """A pooch downloader that resumes. Bytes go to ``NAME.part``; when a transfer breaks, the
    part is kept and continued with an HTTP ``Range`` request (``retries`` times here, then on
    the next run); a server that ignores ``Range`` sends the whole file again. Only the whole
    file is handed to pooch, which checks its md5 before it is kept."""

    def __init__(self, part: Path, size=None, progress=True, retries=2, wait=1.0, timeout=60):
        self.part, self.size, self.progress = Path(part), size, progress
        self.retries, self.wait, self.timeout = retries, wait, timeout
        self.md5: str | None = None
        self.received = 0

    def __call__(self, url: str, output_file, pooch=None, check_only: bool = False):
        for attempt in range(self.retries + 1):
            try:
                self._transfer(url)
                break
            except _request_errors() as error:
                if attempt == self.retries:
                    raise
                left = self.retries - attempt
                log.warning("%s: %s; resuming (%d tries left)", self.part.stem, error, left)
                time.sleep(min(self.wait * (attempt + 1), 10))
        self.received = self.part.stat().st_size
        self.md5 = file_md5(self.part)
        shutil.move(self.part, output_file)

    def _transfer(self, url: str) -> None:
        import requests

        have = self.part.stat().st_size if self.part.is_file() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if have and response.status_code == 416:
                return  # nothing left to send: the part is whole (or too long: md5 will say)
            response.raise_for_status()
            if have and not _continues_at(response, have):
                have = 0  # the server sent the whole file
            length = int(response.headers.get("Content-Length") or 0)
            total = have + length if length else self.size
            with (
                open(self.part, "ab" if have else "wb") as sink,
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    desc=self.part.stem,
                    disable=not self.progress,
                ) as bar,
            ):
                for chunk in response.iter_content(1 << 16):
                    sink.write(chunk)
                    bar.update(len(chunk))

    def kept_message(self) -> str:
        if self.part.is_file():
            return (
                f"the {self.part.stat().st_size} bytes received are kept in {self.part}; "
                "run the command again to resume"
            )
        return "run the command again"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Placer:
    """pooch processor, run only on a verified file: unpacks an archive (once per md5; a marker
    file remembers it) or copies a plain file into the data root."""

    def __init__(self, out: Path, listed: ListedFile, result: Downloaded):
        self.out, self.listed, self.result = out, listed, result

    def __call__(self, fname: str, action: str, pooch=None) -> str:
        path = Path(fname)
        marker = path.with_name(f".{path.name}.placed")
        if action == "fetch" and marker.is_file() and marker.read_text() == self.listed.md5:
            return fname
        if is_archive(path):
            self.result.unpacked += safe_unpack(path, self.out)
        else:
            shutil.copyfile(path, self.out / path.name)
            self.result.unpacked.append(self.out / path.name)
        marker.write_text(self.listed.md5)
        return fname


def _continues_at(response, offset: int) -> bool:
    """Whether a response is the rest of the file from ``offset`` (206 with that range)."""
    if response.status_code != 206:
        return False
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return match is not None and int(match.group(1)) == offset


def _mismatch(listed: ListedFile, downloader: ResumableDownloader, error: Exception) -> str:
    if downloader.md5 is None:
        return f"{listed.name}: {error}"
    sizes = f"{downloader.received} bytes"
    if listed.size is not None:
        sizes += f" of the {listed.size} listed"
    return (
        f"{listed.name}: checksum mismatch, md5 of the downloaded file {downloader.md5} "
        f"({sizes}), md5 in the listing {listed.md5}; the file was deleted and nothing of it was "
        "unpacked. Run again to download it anew; if it fails again, the source or mirror "
        "serves another file than its listing says."
    )


def _request_errors() -> tuple[type[Exception], ...]:
    import requests

    return (requests.RequestException,)
