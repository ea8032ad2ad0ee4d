"""Pixel data of stored objects: frames by byte range, decoding, transcoding."""

from __future__ import annotations

from io import BytesIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

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
    # native; pydicom handles 1-bit packing and byte order via the decoded array
    return decoded_frame(ds, number)


def decoded_frame(src: Dataset | bytes, number: int) -> bytes:
    """Frame ``number`` decoded to native little-endian pixel bytes (as in Explicit VR
    Little Endian); colour data planar configuration 0 (interleaved)."""
    source = BytesIO(src) if isinstance(src, bytes) else src
    array = pixel_array(source, index=number - 1)
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
