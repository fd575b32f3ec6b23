"""Reading the project's `sequence<TAB>value` text files, plain or gzip.

DREAM files, test sets and prediction files reach us both plain and gzipped,
and not always under a name that says which, so gzip is recognised by its magic
bytes rather than by the file name. Each reader keeps its own error class and
wording; this module only says what went wrong (`CorruptGzipError`) and leaves
naming the file to the caller.
"""

import gzip
import os
import zlib

GZIP_MAGIC = b'\x1f\x8b'


class CorruptGzipError(ValueError):
  """The file starts like gzip but does not decompress (cut short, damaged).

  The message is the decompressor's reason only: callers raise their own error
  class from it, with the file name in the form their users expect.
  """


def read_bytes(path: str | os.PathLike[str]) -> bytes:
  """The file's bytes, gunzipped if it starts with the gzip magic.

  Whole-file, not streamed: every caller needs all of the rows anyway, and a
  corrupt gzip is then reported before any row has been used.

  Raises:
    CorruptGzipError: the gzip is truncated or damaged.
    OSError: the file cannot be read.
  """
  with open(path, 'rb') as f:
    data = f.read()
  if data[:2] != GZIP_MAGIC:
    return data
  try:
    return gzip.decompress(data)
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise CorruptGzipError(str(e)) from None


def split_lines(text: str) -> list[str]:
  """Lines without their LF or CRLF ending, blank lines at the end dropped.

  Files saved on Windows or by editors that add newlines at the end must read
  like the original; a blank line before the last row is left in, for the
  caller to reject with its line number.
  """
  lines = text.split('\n')
  lines = [line[:-1] if line.endswith('\r') else line for line in lines]
  while lines and not lines[-1].strip():
    lines.pop()
  return lines
