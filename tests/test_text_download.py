"""Downloads of SIB-200, UDHR and FewRel against a local HTTP server on 127.0.0.1 (checksums,
atomic writes, clear errors for damaged files), using small stand-in files and patched
checksum tables."""
import hashlib
import json
import zipfile

import pytest

import metaphi.data.fewrel as fewrel
import metaphi.data.sib200 as sib
import metaphi.data.udhr as udhr
from metaphi.data.download import ChecksumError
from metaphi.data.textsets import DatasetError

from test_data_download import server  # noqa: F401  (the fixture: a server on 127.0.0.1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sib_file(split: str, text: str = "Le chat") -> bytes:
    rows = ["index_id\tcategory\ttext"] + [f"{i}\t{sib.LABELS[i % 7]}\t{text} {i}"
                                           for i in range(sib.SENTENCES[split])]
    return ("\n".join(rows) + "\n").encode()


def test_sib200_download_verifies_every_file(server, tmp_path, monkeypatch):
    files = {f"{lang}/{s}.tsv": sib_file(s, lang) for lang in ("fra_Latn", "ell_Grek")
             for s in ("train", "dev", "test")}
    for rel, data in files.items():
        (server.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (server.root / rel).write_bytes(data)
    monkeypatch.setattr(sib, "manifest", lambda: {k: sha(v) for k, v in files.items()})
    folder = sib.download_sib200(tmp_path / "data", base_url=server.url, progress=False)
    assert folder == tmp_path / "data" / "sib200"
    assert len(server.requests) == 6
    rows = sib.read_sib200(folder)
    assert len(rows[("ell_Grek", "test")]) == 204 and rows[("fra_Latn", "dev")][0][2] == "fra_Latn 0"
    sib.download_sib200(tmp_path / "data", base_url=server.url, progress=False)
    assert len(server.requests) == 6  # verified files are not fetched again
    assert not [p for p in folder.rglob(".*")]  # no temporary files left
    # a file edited after download: the loader names it
    (folder / "annotated/ell_Grek/dev.tsv").write_bytes(sib_file("dev", "x"))
    with pytest.raises(DatasetError, match=r"ell_Grek/dev.tsv does not match"):
        sib.read_sib200(folder)
    # a damaged file on the server never lands
    (server.root / "fra_Latn/test.tsv").write_bytes(b"truncated")
    (folder / "annotated/fra_Latn/test.tsv").unlink()
    with pytest.raises(ChecksumError, match="test.tsv"):
        sib.download_sib200(tmp_path / "data", base_url=server.url, progress=False)
    assert not (folder / "annotated/fra_Latn/test.tsv").exists()


def test_sib200_reads_zips_and_names_bad_rows(tmp_path, monkeypatch):
    folder = tmp_path / "sib200"
    folder.mkdir()
    good = sib_file("dev")
    bad = good.replace(b"\ttravel\t", b"\tcooking\t", 1)
    with zipfile.ZipFile(folder / "sib-200-annotated.zip", "w") as zf:
        zf.writestr("sib-200/annotated/fra_Latn/dev.tsv", bad)
    monkeypatch.setattr(sib, "manifest", lambda: {"fra_Latn/dev.tsv": sha(bad)})
    with pytest.raises(DatasetError, match=r"fra_Latn/dev.tsv:3: unknown category 'cooking'"):
        sib.read_sib200(folder)
    with pytest.raises(DatasetError, match=r"lacks 1 file\(s\): deu_Latn/test.tsv"):
        sib.read_sib200(folder, {"test": ["deu_Latn"]})
    (folder / "sib-200-annotated.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a valid zip"):
        sib.read_sib200(folder)


def test_udhr_and_fewrel_downloads(server, tmp_path, monkeypatch):
    with zipfile.ZipFile(server.root / "udhr2.zip", "w") as zf:
        zf.writestr("udhr2/fra.txt", "Tous les êtres humains naissent libres et égaux\n" * 50)
        zf.writestr("udhr2/bad.txt", b"\xff\xfe broken")
    digest = sha((server.root / "udhr2.zip").read_bytes())
    monkeypatch.setattr(udhr, "CHECKSUMS", (("sha256", digest),))
    folder = udhr.download_udhr(tmp_path / "d", url=f"{server.url}/udhr2.zip",
                                checksums=(("sha256", digest),), progress=False)
    assert udhr.read_udhr(folder, ["fra"])["fra"].startswith("Tous")
    with pytest.raises(DatasetError, match=r"udhr2/bad.txt: not valid UTF-8"):
        udhr.read_udhr(folder, ["bad"])
    with pytest.raises(ChecksumError):
        udhr.download_udhr(tmp_path / "d2", url=f"{server.url}/udhr2.zip",
                           checksums=(("sha256", "0" * 64),), progress=False)
    assert not (tmp_path / "d2" / "udhr2" / "udhr2.zip").exists()

    inst = {"tokens": ["aspirin", "treats", "pain"], "h": ["aspirin", "C1", [[0]]],
            "t": ["pain", "C2", [[2]]]}
    table = {}
    for name in fewrel.CHECKSUMS:
        data = json.dumps({"P1": [inst] * 3}).encode()
        (server.root / name).write_bytes(data)
        table[name] = sha(data)
    monkeypatch.setattr(fewrel, "CHECKSUMS", table)
    folder = fewrel.download_fewrel(tmp_path / "d", base_url=server.url, progress=False)
    got = fewrel.read_fewrel(folder)
    assert got["pubmed"]["P1"][0] == "[E1] aspirin [/E1] treats [E2] pain [/E2]"
