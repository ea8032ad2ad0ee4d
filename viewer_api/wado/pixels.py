"""Pixel data of stored objects: frames by byte range, decoding, transcoding."""

from __future__ import annotations

from io import BytesIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacs.metadata.document import FrameIndex
from pacs.storage.base import ObjectStore


def decodable(transfer_syntax: str) -> bool:
    """True when pydicom has a working decoder for ``transfer_syntax`` (or it is native)."""
    uid = UID(transfer_syntax)
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent."""
    return int(ds.get("NumberOfFrames", 1) or 1)


def stored_frame(store: ObjectStore, key: str, index: FrameIndex, number: int) -> bytes:
    """Frame ``number`` (1-based) as stored, read by byte ranges of the object only."""
    ranges = index.frames[number - 1]
    if len(ranges) == 1:
        return store.get_range(key, *ranges[0])
    return b"".join(store.get_range(key, offset, length) for offset, length in ranges)


def frame_from_object(data: bytes, number: int) -> bytes:
    """Frame ``number`` as stored, parsed out of the whole object (no index available)."""
    ds = dcmread(BytesIO(data))
    frames = number_of_frames(ds)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        for k, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames), 1):
            if k == number:
                return bytes(frame)
        raise IndexError(number)
    if int(ds.get("BitsAllocated", 0) or 0) == 1:
        return packed_frame(ds, number)
    # native; pydicom handles byte order via the decoded array
    return decoded_frame(data, number)


def packed_frame(ds: Dataset, number: int) -> bytes:
    """Frame ``number`` of 1-bit native pixel data as stored: its bits packed from the first
    bit of the first byte (PS3.5 8.1.1), though frames need not start on a byte boundary."""
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    start = (number - 1) * bits
    if start % 8 == 0 and bits % 8 == 0:
        return bytes(ds.PixelData[start // 8 : (start + bits) // 8])
    window = np.frombuffer(ds.PixelData[start // 8 : (start + bits + 7) // 8 + 1], np.uint8)
    unpacked = np.unpackbits(window, bitorder="little")[start % 8 : start % 8 + bits]
    return np.packbits(unpacked, bitorder="little").tobytes()


def frame_array(data: bytes, number: int) -> np.ndarray:
    """Frame ``number`` (1-based) of a Part-10 object decoded (colour as RGB); a deflated
    data set is inflated first (pydicom's file reader of frames does not inflate)."""
    if not _is_deflated(data):
        return pixel_array(BytesIO(data), index=number - 1)
    ds = dcmread(BytesIO(data))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # inflated: native in memory
    array, _ = get_decoder(ExplicitVRLittleEndian).as_array(ds, index=number - 1)
    return array


def _is_deflated(data: bytes) -> bool:
    meta = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=[]).file_meta
    syntax = meta.get("TransferSyntaxUID")
    return bool(syntax is not None and syntax.is_deflated)


def decoded_frame(data: bytes, number: int) -> bytes:
    """Frame ``number`` decoded to native little-endian pixel bytes (as in Explicit VR
    Little Endian); colour data planar configuration 0 (interleaved)."""
    array = frame_array(data, number)
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def transcode_part10(data: bytes, target: str) -> bytes:
    """The object re-encoded as a Part-10 file in native ``target`` syntax (decompressed)."""
    ds = dcmread(BytesIO(data))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = UID(target)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
