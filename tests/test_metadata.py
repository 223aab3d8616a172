"""ICC profile, EXIF and XMP: from an input image into the .vqz file, and back out into PNG,
JPEG, WebP and TIFF (vqcodec.fileio, images, codec, the CLI and the Pillow plugin)."""
import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo

import vqcodec
from vqcodec import container, fileio, images, zoo
from vqcodec.cli import main
from vqcodec.fileio import ImageMetadata, MetadataWarning

from conftest import photo_crop

ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
ORIENTATION, MAKE, DATE = 0x0112, 0x010F, 0x9003


def exif_bytes(orientation: int = 6) -> bytes:
    """EXIF with a camera make, an orientation and a capture date (in the Exif IFD), as
    Pillow's info["exif"] holds it ("Exif\\0\\0" first)."""
    exif = Image.Exif()
    exif[MAKE], exif[ORIENTATION] = "vqcodec-test", orientation
    exif.get_ifd(0x8769)[DATE] = "2024:05:06 07:08:09"
    return exif.tobytes()


def tags(exif: bytes) -> tuple:
    parsed = Image.Exif()
    parsed.load(exif)
    return parsed.get(MAKE), parsed.get(ORIENTATION, 1), parsed.get_ifd(0x8769).get(DATE)


@pytest.fixture(scope="module")
def model():
    """The photo model's zoo entry (skips when it is not installed)."""
    try:
        return zoo.find("photo")
    except zoo.ModelError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def tagged_jpeg(photo) -> bytes:
    """A 48 x 32 JPEG (shown as 32 x 48: orientation 6) with ICC profile, EXIF and XMP; its
    left 8 columns are blue, which orientation 6 puts at the top."""
    pixels = photo_crop(photo, 48, 32).copy()
    pixels[:, :8] = (0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, exif=exif_bytes(6), icc_profile=ICC, xmp=XMP)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tagged_vqz(tagged_jpeg, model) -> bytes:
    return vqcodec.encode(tagged_jpeg, quality=4)


def test_encode_stores_icc_exif_and_xmp_upright(tagged_vqz):
    stored = container.unpack(tagged_vqz).metadata
    assert list(stored) == ["icc", "exif", "xmp"]
    assert stored["icc"] == ICC
    assert tags(stored["exif"]) == ("vqcodec-test", 1, "2024:05:06 07:08:09")  # the orientation is applied
    assert len(stored["exif"]) == len(exif_bytes()) - 6  # rewritten in place: nothing else changes
    assert stored["xmp"] == XMP.replace(b'tiff:Orientation="6"', b'tiff:Orientation="1"')


def test_orientation_is_applied_to_the_pixels(tagged_vqz):
    picture = vqcodec.decode(tagged_vqz)
    assert picture.size == (32, 48)  # 48 x 32 turned a quarter
    pixels = np.asarray(picture).astype(int)
    top, rest = pixels[:8].mean(axis=(0, 1)), pixels[12:].mean(axis=(0, 1))
    assert top[2] > top[0] + 60 and top[2] > rest[2] + 40  # the blue columns are now the top rows


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp"), ("TIFF", ".tif")])
def test_decode_writes_the_metadata_into_png_jpeg_webp_and_tiff(tagged_vqz, tmp_path, runner, fmt, suffix):
    source = tmp_path / "a.vqz"
    source.write_bytes(tagged_vqz)
    out = tmp_path / f"a{suffix}"
    result = runner.invoke(main, ["decode", str(source), "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    with Image.open(out) as written:
        assert written.format == fmt
        back = fileio.read_metadata(written)
    stored = container.unpack(tagged_vqz).metadata
    assert back.icc == stored["icc"] and back.xmp == stored["xmp"]
    assert tags(back.exif) == ("vqcodec-test", 1, "2024:05:06 07:08:09")


def test_an_output_format_without_metadata_warns(tagged_vqz, tmp_path, runner):
    source = tmp_path / "a.vqz"
    source.write_bytes(tagged_vqz)
    result = runner.invoke(main, ["decode", str(source), "-o", str(tmp_path / "a.bmp"), "--json"],
                           catch_exceptions=False)
    assert result.exit_code == 0
    assert "warning: BMP output cannot hold the ICC profile, EXIF and XMP; left out" in result.stderr
    record = json.loads(result.stdout)
    assert record["metadata"] == ["icc", "exif", "xmp"] and len(record["warnings"]) == 1


def test_cli_metadata_option(tagged_jpeg, tmp_path, runner, model):
    source = tmp_path / "a.jpg"
    source.write_bytes(tagged_jpeg)
    for option, kinds in (("none", []), ("icc,xmp", ["icc", "xmp"]), ("all", ["icc", "exif", "xmp"])):
        out = tmp_path / f"{option}.vqz"
        result = runner.invoke(main, ["encode", str(source), "-o", str(out), "-q", "1", "--metadata", option,
                                      "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["metadata"] == kinds
        assert list(container.unpack(out.read_bytes()).metadata) == kinds
    assert (tmp_path / "none.vqz").stat().st_size + 500 < (tmp_path / "all.vqz").stat().st_size
    with Image.open(tmp_path / "none.vqz") as im:
        assert not {"icc_profile", "exif", "xmp"} & set(im.info)
    result = runner.invoke(main, ["encode", str(source), "--metadata", "gps"])
    assert result.exit_code == 2 and "unknown metadata kind 'gps'" in result.output


def test_api_metadata_argument(tagged_jpeg, model):
    assert container.unpack(vqcodec.encode(tagged_jpeg, quality=1, metadata="none")).metadata == {}
    assert list(container.unpack(vqcodec.encode(tagged_jpeg, quality=1, metadata=["exif"])).metadata) == ["exif"]
    with pytest.raises(ValueError, match="unknown metadata kind 'iptc'"):
        vqcodec.encode(tagged_jpeg, quality=1, metadata="icc,iptc")


def test_oversize_metadata_is_refused_clearly(photo, tmp_path, runner, model):
    text = PngInfo()
    text.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>" + "x" * (1 << 20) + "</x:xmpmeta>")
    path = tmp_path / "big.png"
    Image.fromarray(photo_crop(photo, 16, 16)).save(path, pnginfo=text)
    with pytest.raises(ValueError, match=r"the input's metadata of \d+ bytes \(xmp \d+\) exceeds the .vqz limit "
                                         r"of 1048576 bytes; store less of it with metadata="):
        vqcodec.encode(path)
    result = runner.invoke(main, ["encode", str(path), "-o", str(tmp_path / "big.vqz")])
    assert result.exit_code == 1 and "exceeds the .vqz limit of 1048576 bytes" in result.output
    assert "--metadata" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "big.vqz").exists()
    result = runner.invoke(main, ["encode", str(path), "-o", str(tmp_path / "big.vqz"), "--metadata", "none"])
    assert result.exit_code == 0


@pytest.mark.parametrize("exif, icc", [(b"Exif\x00\x00garbage, not a TIFF header", None),
                                       (b"MM\x00*\x00\x00\xff\xff", None),
                                       (None, b"not an ICC profile" * 10)])
def test_malformed_metadata_warns_but_the_pixels_are_encoded(photo, tmp_path, runner, model, exif, icc):
    path = tmp_path / "bad.png"
    Image.fromarray(photo_crop(photo, 24, 16)).save(path, exif=exif, icc_profile=icc, pnginfo=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = vqcodec.encode(path, quality=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, MetadataWarning)]
    what = "EXIF" if exif else "ICC profile"
    assert any(m.startswith(f"{what} left out") for m in messages), messages
    assert container.unpack(data).metadata == {}
    assert vqcodec.decode(data).size == (24, 16)
    result = runner.invoke(main, ["encode", str(path), "-o", str(tmp_path / "bad.vqz")], catch_exceptions=False)
    assert result.exit_code == 0 and (tmp_path / "bad.vqz").exists()
    assert f"warning: {what} left out" in result.stderr


def test_tiff_input_keeps_its_exif_tags(photo, tmp_path, model):
    path = tmp_path / "in.tif"
    Image.fromarray(photo_crop(photo, 16, 8)).save(path, exif=exif_bytes(1), icc_profile=ICC)
    stored = container.unpack(vqcodec.encode(path, quality=1)).metadata
    assert stored["icc"] == ICC and tags(stored["exif"]) == ("vqcodec-test", 1, "2024:05:06 07:08:09")


def test_pillow_plugin_exposes_and_takes_metadata(tagged_vqz, photo, tmp_path, model):
    path = tmp_path / "a.vqz"
    path.write_bytes(tagged_vqz)
    with Image.open(path) as im:  # known at open, without decoding
        assert im.info["icc_profile"] == ICC and im.info["xmp"].startswith(b"<x:xmpmeta")
        assert tags(im.info["exif"]) == ("vqcodec-test", 1, "2024:05:06 07:08:09")
        assert im.getexif()[MAKE] == "vqcodec-test"
    plain = Image.fromarray(photo_crop(photo, 16, 16))
    plain.save(tmp_path / "b.vqz", quality=1, icc_profile=ICC, xmp=b"<x/>")
    assert container.unpack((tmp_path / "b.vqz").read_bytes()).metadata == {"icc": ICC, "xmp": b"<x/>"}
    with Image.open(path) as im:
        im.save(tmp_path / "c.vqz", quality=1, metadata="icc")  # a .vqz's metadata travels on
    assert container.unpack((tmp_path / "c.vqz").read_bytes()).metadata == {"icc": ICC}


def test_image_metadata_helpers():
    found = ImageMetadata.from_info({"icc_profile": ICC, "exif": exif_bytes(3), "xmp": "<x/>"})
    assert found.exif == exif_bytes(3)[6:] and found.xmp == b"<x/>"
    assert ImageMetadata.from_info(found.to_info()) == found
    assert found.select(["icc"]).items() == {"icc": ICC}
    assert fileio.metadata_kinds("all") == ("icc", "exif", "xmp") == fileio.metadata_kinds("xmp, icc,exif")
    assert fileio.metadata_kinds("none") == () and fileio.metadata_kinds("XMP") == ("xmp",)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = images.encode_image_bytes(Image.new("RGB", (4, 4)), "JPEG", ImageMetadata(exif=b"MM" + bytes(70_000)))
    assert "JPEG output cannot hold the EXIF" in str(caught[0].message)
    assert "exif" not in Image.open(io.BytesIO(data)).info
