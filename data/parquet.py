"""Instances <-> Parquet (pyarrow): the columnar form of a dataset for fast, typed loading at scale.

One row per ``Instance``, one column per field (``uid`` included, so the unique key survives the round trip; a
file without the column reads back with the default ``id#qa_type``). ``struc_info``, ``rc_box`` and ``extra`` hold
arbitrary JSON and are stored as JSON strings (null ``struc_info``/``rc_box`` stay null); ``video`` is
``list<string>`` with ``video_is_file`` telling one video file (a one-element list) from a frame list.
``read_parquet`` returns Instances equal to the ones written (JSON-compatible ``extra``/``struc_info`` values
assumed: a tuple comes back as a list). ``data.reader.read_instances`` reads these files too, with the reader's
validation and media-path confinement; ``read_parquet`` trusts the file (it is meant for files this module wrote).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

import pyarrow as pa
import pyarrow.parquet as pq

from common.files import atomic_write
from data.errors import BadRow, DataFileError
from data.schema import Instance

PathLike = Union[str, "os.PathLike[str]"]
FORMAT_VERSION = "2"  # 2: the uid column
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("qa_type", pa.string(), nullable=False),
        pa.field("data_source", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("video", pa.list_(pa.string())),
        pa.field("video_is_file", pa.bool_()),
        pa.field("image", pa.string()),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64()),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("struc_info", pa.string()),  # JSON
        pa.field("rc_box", pa.string()),  # JSON [frame, [x1, y1, x2, y2]]
        pa.field("extra", pa.string(), nullable=False),  # JSON object
        pa.field("uid", pa.string()),
    ],
    metadata={b"medgrpo.format": b"instances", b"medgrpo.version": FORMAT_VERSION.encode()},
)
_JSON_COLUMNS = ("struc_info", "rc_box", "extra")
_REQUIRED = ("id", "qa_type", "data_source", "question")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def instances_to_table(instances: Iterable[Instance]) -> pa.Table:
    """A pyarrow Table with ``SCHEMA`` (raises TypeError naming the instance whose field cannot be stored)."""
    cols: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for inst in instances:
        try:
            video = inst.video
            cols["id"].append(inst.id)
            cols["qa_type"].append(inst.qa_type)
            cols["data_source"].append(inst.data_source)
            cols["question"].append(inst.question)
            cols["answer"].append(inst.answer)
            cols["video"].append(None if video is None else [video] if isinstance(video, str) else list(video))
            cols["video_is_file"].append(None if video is None else isinstance(video, str))
            cols["image"].append(inst.image)
            cols["fps"].append(float(inst.fps))
            cols["start_frame"].append(int(inst.start_frame))
            cols["end_frame"].append(None if inst.end_frame is None else int(inst.end_frame))
            cols["video_id"].append(inst.video_id)
            cols["struc_info"].append(None if inst.struc_info is None else _dumps(inst.struc_info))
            cols["rc_box"].append(None if inst.rc_box is None else _dumps([inst.rc_box[0], list(inst.rc_box[1])]))
            cols["extra"].append(_dumps(inst.extra or {}))
            cols["uid"].append(inst.uid or None)
        except (TypeError, ValueError) as e:
            raise TypeError(f"instance {inst.id!r} cannot be stored in Parquet: {e}") from None
    try:
        return pa.Table.from_pydict(cols, schema=SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise TypeError(f"instances cannot be stored in Parquet: {e}") from None


def write_parquet(instances: Iterable[Instance], path: PathLike, *, compression: str = "zstd") -> Path:
    """Write instances to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    table = instances_to_table(instances)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression=compression))


def _open(path: Path) -> pq.ParquetFile:
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataFileError(f"{path}: not a readable Parquet file ({e})") from None


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet row -> Instance-form dict (JSON columns decoded, ``video`` back to str or list)."""
    for name in _JSON_COLUMNS:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    if isinstance(row.get("rc_box"), list) and len(row["rc_box"]) == 2:
        row["rc_box"] = (row["rc_box"][0], row["rc_box"][1])
    is_file = row.pop("video_is_file", None)
    if is_file and isinstance(row.get("video"), list) and len(row["video"]) == 1:
        row["video"] = row["video"][0]
    return row


def iter_parquet_rows(path: PathLike, batch_size: int = 4096) -> Iterator[tuple[int, Any]]:
    """(row index, Instance-form dict) for each row; a row whose JSON columns do not decode yields a ``BadRow``.

    Null columns are left out of the dict so the reader applies its defaults; unknown columns are kept.
    """
    pf = _open(Path(os.fspath(path)))
    index = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                row = {k: v for k, v in row.items() if v is not None}
                try:
                    decoded = _decode(row)
                except json.JSONDecodeError as e:
                    decoded = BadRow(f"a JSON column does not decode: {e.msg} at column {e.colno}")
                except RecursionError:
                    decoded = BadRow("a JSON column is nested too deeply for the parser")
                except ValueError as e:  # an integer of more than 4300 digits
                    decoded = BadRow(f"a JSON column does not decode: {e}")
                yield index, decoded
                index += 1
    except (pa.ArrowException, OSError) as e:
        raise DataFileError(f"{path}: Parquet read failed at row {index} ({e})") from None


def read_parquet(path: PathLike) -> list[Instance]:
    """The instances ``write_parquet`` wrote, equal field by field. Raises ``DataFileError`` on a foreign file."""
    p = Path(os.fspath(path))
    pf = _open(p)
    missing = [c for c in _REQUIRED if c not in pf.schema_arrow.names]
    if missing:
        raise DataFileError(f"{p}: not an instances Parquet file (missing columns: {', '.join(missing)})")
    out: list[Instance] = []
    for index, row in iter_parquet_rows(p):
        if isinstance(row, BadRow):
            raise DataFileError(f"{p}: row {index}: {row.detail}")
        unknown = sorted(set(row) - set(Instance.__dataclass_fields__))
        if unknown:
            raise DataFileError(f"{p}: row {index}: unknown columns {unknown}; use data.reader.read_instances")
        row.setdefault("extra", {})
        out.append(Instance(**row))
    return out
