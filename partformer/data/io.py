"""Shared readers for dataset modules: annotation tables, required files, images and masks.

Errors name the file, the 1-based line (for tables), what was expected and how to fix it, so that a
wrong download or a hand-edited list file fails at dataset construction with a message a user can
act on, not with an ``IndexError`` deep inside a DataLoader worker.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

__all__ = ["BadImageError", "DatasetError", "read_table", "require_file", "load_image", "load_mask",
           "DATASETS_README"]

DATASETS_README = "datasets/README.md"

PathLike = Union[str, "os.PathLike[str]"]

# cv2 applies the EXIF orientation by default; the annotations of every benchmark we read were made
# on the stored pixel grid (and the public loaders use PIL, which ignores EXIF), so ignore it too.
_IMREAD_COLOR = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_IMREAD_MASK = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION

_TYPE_NAMES = {int: "integer", float: "number", str: "text"}
_NUMPY_TYPES = {int: np.int64, float: np.float64}


class BadImageError(OSError):
    """An image (or mask) file exists but cannot be decoded (truncated download, wrong format)."""


class DatasetError(ValueError):
    """A dataset cannot be built from ``data.*`` (layout, annotation tables, options); the message
    names the config keys, the file and line, and the fix."""


def relative_path(rel: str, where: str) -> str:
    """A path read from an annotation file, checked to stay inside the folder it is relative to:
    not absolute, no drive letter, and no ``..`` that climbs out of it (a list file must never make
    a loader open ``/etc/passwd`` or train on files outside ``data.root``). ``where`` names the
    file and line (``".../images.txt, line 12"``) for the error. Returns ``rel`` unchanged."""
    posix = rel.replace("\\", "/")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    depth = 0
    for p in parts:
        depth += -1 if p == ".." else 1
        if depth < 0:
            break
    if posix.startswith("/") or os.path.isabs(rel) or (len(posix) > 1 and posix[1] == ":") \
            or depth < 0 or not parts:
        raise DatasetError(
            f"{where}: the path {rel!r} is {'absolute' if posix.startswith('/') or ':' in posix[:2] else 'outside the dataset folder'}; "
            "annotation files may only name files inside the dataset folder by a relative path "
            "without '..' that leaves it (e.g. 001.Black_footed_Albatross/img_0001.jpg). Fix that "
            "line, or re-download the annotation file")
    return rel


def require_file(path: PathLike, layout_hint: str = "") -> str:
    """Return ``path`` as a string if it is an existing file, else raise ``FileNotFoundError``.

    The message names the missing file, shows ``layout_hint`` (the expected directory layout of the
    dataset) and points at ``datasets/README.md`` for download instructions.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    what = "is a directory, expected a file" if os.path.isdir(path) else "not found"
    msg = f"Required file {path} {what}."
    if layout_hint:
        msg += "\nExpected layout:\n" + _indent(layout_hint.strip("\n"))
    msg += (f"\nSee {DATASETS_README} for where to download the dataset and how to point the "
            f"config at it (data.root=...).")
    raise FileNotFoundError(msg)


def write_splits(out_dir: str, splits: Dict[str, Sequence[str]], info: Dict) -> None:
    """The output of a prepare tool: ``<out_dir>/<split>.txt`` (one name a line, in the given
    order) per split and ``<out_dir>/prepare_info.json`` (``info``), each written atomically."""
    import json

    from partformer.fileio import atomic_open
    for name, files in splits.items():
        with atomic_open(os.path.join(out_dir, f"{name}.txt"), "w") as f:
            f.write("".join(n + "\n" for n in files))
    with atomic_open(os.path.join(out_dir, "prepare_info.json"), "w") as f:
        json.dump(info, f, indent=2)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _read_text(path: str) -> str:
    try:
        # utf-8-sig: tolerate a BOM written by Windows editors
        with open(path, "r", encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e}); is it the right file?") from None


def read_table(path: PathLike, ncols: int, types: Sequence[type], *,
               names: Optional[Sequence[str]] = None, rest_of_line: bool = False,
               return_line_numbers: bool = False) -> Union[List, Tuple[List, np.ndarray]]:
    """Parse a whitespace-separated annotation file into columns.

    Args:
        path: the text file. Blank lines are skipped; a missing final newline, CRLF line ends and a
            UTF-8 BOM are accepted.
        ncols: number of columns every non-blank line must have.
        types: one of ``int``, ``float``, ``str`` per column. When the last column is ``str`` it
            takes the rest of the line, so names with spaces (CUB ``parts.txt``: ``7 left eye``)
            parse as one field.
        names: optional column names, used in error messages (e.g. ``("image_id", "x", "y")``).
        rest_of_line: the last column (``str``) takes the rest of the line, spaces included (names
            such as CUB's ``7 left eye``). Otherwise a line with more fields than ``ncols`` is an
            error (a path column never silently swallows an extra column).
        return_line_numbers: also return the 1-based line number of every row.

    Returns:
        A list of ``ncols`` columns: ``int`` -> ``int64`` array, ``float`` -> ``float64`` array,
        ``str`` -> list of str; plus an ``int64`` array of line numbers if requested.

    Raises:
        ValueError naming the file, the 1-based line number and the expected columns when a line
        has the wrong number of fields, a field is not a valid integer / finite number, or the file
        is not text.
    """
    path = os.fspath(path)
    types, names = _check_schema(path, ncols, types, names)
    schema = " ".join(f"<{n}:{_TYPE_NAMES[t]}>" for n, t in zip(names, types))
    text = _read_text(path)
    if str not in types:
        fast = _parse_numeric_fast(text, ncols, types)
        if fast is not None:
            columns, line_numbers_arr = fast
            return (columns, line_numbers_arr) if return_line_numbers else columns
    # general path (text columns, or a numeric file the fast path refused: it finds the error)
    if rest_of_line and types[-1] is not str:
        raise ValueError("read_table: rest_of_line needs a str last column")
    rows, line_numbers = _split_lines(path, text, ncols, schema, rest_of_line, str in types)
    raw_columns = list(zip(*rows)) if rows else [()] * ncols
    columns = [list(raw) if t is str else
               _numeric_column(path, raw, t, f"column {c + 1} ({names[c]})", line_numbers, schema)
               for c, (t, raw) in enumerate(zip(types, raw_columns))]
    if return_line_numbers:
        return columns, np.asarray(line_numbers, dtype=np.int64)
    return columns


def _check_schema(path: str, ncols: int, types: Sequence[type],
                  names: Optional[Sequence[str]]) -> Tuple[Tuple[type, ...], Tuple[str, ...]]:
    """The column types and names of :func:`read_table`, checked (a programming error otherwise)."""
    types = tuple(types)
    if len(types) != ncols:
        raise ValueError(f"read_table({path!r}): {len(types)} types given for {ncols} columns")
    for t in types:
        if t not in _TYPE_NAMES:
            raise ValueError(f"read_table: column type must be int, float or str, got {t!r}")
    if names is not None and len(names) != ncols:
        raise ValueError(f"read_table({path!r}): {len(names)} names given for {ncols} columns")
    names = tuple(names) if names is not None else tuple(f"column{c + 1}" for c in range(ncols))
    return types, names


def _split_lines(path: str, text: str, ncols: int, schema: str, rest_of_line: bool,
                 has_text: bool) -> Tuple[List[List[str]], List[int]]:
    """The fields of every non-blank line and its 1-based number; a line with another number of
    fields is an error naming it."""
    maxsplit = ncols - 1 if rest_of_line else -1
    rows: List[List[str]] = []
    line_numbers: List[int] = []
    for k, line in enumerate(text.splitlines(), 1):
        fields = line.strip().split(None, maxsplit)
        if not fields:
            continue
        if len(fields) != ncols:
            raise ValueError(f"{path}, line {k}: expected {ncols} whitespace-separated columns "
                             f"{schema}, found {len(fields)}: {line.strip()!r}. Fix or remove "
                             f"that line" + ("" if rest_of_line or not has_text else
                                             " (a text field here cannot contain spaces)"))
        rows.append(fields)
        line_numbers.append(k)
    return rows, line_numbers


def _numeric_column(path: str, raw: Sequence[str], t: type, what: str, line_numbers: List[int],
                    schema: str) -> np.ndarray:
    """``raw`` fields as an int64 / float64 array; a field that is not an integer / a finite
    number is an error naming its line."""
    try:
        col = np.array(raw, dtype=_NUMPY_TYPES[t])
        bad = None
        if t is float and not np.isfinite(col).all():
            bad = int(np.flatnonzero(~np.isfinite(col))[0])
    except (ValueError, OverflowError):
        col, bad = None, _first_bad(raw, t)
    if bad is not None:
        raise ValueError(f"{path}, line {line_numbers[bad]}: {what} expected "
                         f"{'a finite number' if t is float else 'an integer'}, found "
                         f"{raw[bad]!r}; expected columns {schema}")
    if col is None:  # numpy refused a field that Python parses: convert the slow way
        col = np.array([t(s) for s in raw], dtype=_NUMPY_TYPES[t])
    return col


def _parse_numeric_fast(text: str, ncols: int, types: Sequence[type]):
    """Parse an all-numeric table with numpy's C reader (the real CUB part_locs has 176,820 rows).

    Returns ``(columns, line_numbers)`` when every non-blank line has ``ncols`` valid fields, else
    ``None`` so that the general path finds the first problem and reports its line number.
    """
    line_numbers = [k for k, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not line_numbers:
        return None
    dtype = np.dtype([(f"c{c}", _NUMPY_TYPES[t]) for c, t in enumerate(types)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = np.loadtxt(io.StringIO(text), dtype=dtype, comments=None, ndmin=1)
    except (ValueError, OverflowError):
        return None
    if len(table) != len(line_numbers):  # exotic line separators: let the general path decide
        return None
    columns = [np.ascontiguousarray(table[f"c{c}"]) for c in range(ncols)]
    if any(t is float and not np.isfinite(col).all() for t, col in zip(types, columns)):
        return None
    return columns, np.asarray(line_numbers, dtype=np.int64)


def _first_bad(raw: Sequence[str], t: type) -> Optional[int]:
    """Index of the first field of ``raw`` that ``t`` cannot parse (slow path, errors only)."""
    for i, s in enumerate(raw):
        try:
            v = t(s)
        except (ValueError, OverflowError):
            return i
        if t is float and not np.isfinite(v):
            return i
    return None


def load_image(path: PathLike) -> np.ndarray:
    """Decode an image file to ``uint8 [H, W, 3]`` RGB (grey and RGBA files are converted).

    Raises ``FileNotFoundError`` if the file is missing and ``BadImageError`` if it cannot be
    decoded. EXIF orientation is ignored (annotations refer to the stored pixel grid).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path} not found")
    image = cv2.imread(path, _IMREAD_COLOR)
    if image is None:
        image = _load_with_pil(path)  # formats cv2 lacks (e.g. GIF); None if PIL fails too
        if image is None:
            raise BadImageError(f"cannot decode image {path} (truncated or not an image file; "
                                f"{os.path.getsize(path)} bytes)")
        return image
    if image.dtype != np.uint8:  # IMREAD_COLOR already gives 8 bit; stay safe for odd builds
        image = _to_uint8(image)
    return np.ascontiguousarray(image[:, :, ::-1])  # BGR -> RGB


def exif_orientation(path: PathLike) -> int:
    """The EXIF orientation tag of an image file (1 = as stored; 1 too without EXIF or when the
    file cannot be read by PIL)."""
    try:
        from PIL import Image

        with Image.open(os.fspath(path)) as im:
            value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - no readable EXIF means "as stored"
        return 1
    return value if 1 <= value <= 8 else 1


def apply_exif_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image [H, W, C]`` as a viewer shows it for EXIF ``orientation`` 1-8 (e.g. 6: the stored
    pixels turned 90 degrees clockwise), the same geometry as ``PIL.ImageOps.exif_transpose``."""
    ops = {1: lambda a: a,
           2: lambda a: a[:, ::-1],
           3: lambda a: a[::-1, ::-1],
           4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2),
           6: lambda a: np.rot90(a, k=-1),
           7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
           8: lambda a: np.rot90(a, k=1)}
    if orientation not in ops:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    return np.ascontiguousarray(ops[orientation](image))


def _load_with_pil(path: str) -> Optional[np.ndarray]:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception:  # noqa: BLE001 - any decoder failure means "bad image" to the caller
        return None


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def load_mask(path: PathLike) -> np.ndarray:
    """Decode a single-channel mask / label PNG to a 2-D array, keeping its dtype (uint8/uint16).

    A 3- or 4-channel file is accepted when its colour channels are equal (alpha is dropped).
    Raises ``FileNotFoundError`` if missing and ``BadImageError`` if it cannot be decoded or is a
    colour image.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask file {path} not found")
    mask = cv2.imread(path, _IMREAD_MASK)
    if mask is None:
        raise BadImageError(f"cannot decode mask {path} (truncated or not an image file; "
                            f"{os.path.getsize(path)} bytes)")
    if mask.ndim == 3:
        colour = mask[:, :, :3]
        if not ((colour == colour[:, :, :1]).all()):
            raise BadImageError(f"mask {path} is a colour image; expected a single-channel PNG "
                                f"(grey values / label ids)")
        mask = colour[:, :, 0]
    return np.ascontiguousarray(mask)


SKIP_HINT = ("Re-download or remove the file (and its line in the split's list), or skip such "
             "images with a warning: data.skip_bad_images=true for training, "
             "eval.skip_bad_images=true for evaluation (skip_bad_images=True in Python)")


def check_index(index: int, length: int, what: str) -> None:
    """IndexError naming the dataset/split when ``index`` is outside ``[0, length)``."""
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for {what} ({length} images)")


def decode_or_skip(load, skip_bad_images: bool):
    """Run ``load()``, which decodes one sample's files. A file that is missing or fails to decode
    (the two are handled alike) raises ``BadImageError`` / ``FileNotFoundError`` saying how to fix
    or skip it; with ``skip_bad_images`` it warns, naming the file, and returns ``None``
    (``partformer.data.collate`` drops it and counts it)."""
    try:
        return load()
    except (BadImageError, FileNotFoundError) as e:
        if skip_bad_images:
            what = "missing" if isinstance(e, FileNotFoundError) else "undecodable"
            warnings.warn(f"skipping {what} file: {e}", stacklevel=3)
            return None
        raise type(e)(f"{e}. {SKIP_HINT}") from None
