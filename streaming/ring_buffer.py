"""A fixed-capacity ring of audio tokens with absolute indices.

Token k always means the audio [0.16 k, 0.16 (k+1)) s of the stream, however long the stream has run
and however often the front was dropped: the streaming session addresses tokens by these indices
(segment times, commit points), and the buffer maps them onto slots of one preallocated tensor, so
memory stays flat for hours.

    ring = TokenRing(capacity=188)
    first = ring.append(tokens)        # tokens [n, D], already projected by the audio embedder
    window = ring.window(commit)       # tokens [commit, ring.end) as a new [m, D] tensor
    ring.drop_before(commit)           # forget everything before the commit point
"""
from __future__ import annotations

import torch

TOKEN_SECONDS = 0.16          # one audio token per 160 ms (4 x 40 ms after the conv subsampling)
DEFAULT_CAPACITY = 188        # 30 s: the reference's audio block, the longest window the model saw


def token_start(index: int) -> float:
    """Stream time in seconds where token `index` begins."""
    return index * TOKEN_SECONDS


def token_end(index: int) -> float:
    """Stream time in seconds where token `index` ends."""
    return (index + 1) * TOKEN_SECONDS


class RingBufferFull(RuntimeError):
    """append() would overwrite tokens that were not dropped yet."""


class TokenRing:
    """Audio tokens [D] addressed by absolute index in [start, end).

    The storage is allocated on the first append, on that tensor's device and dtype; later appends
    must match both (a silent cast or device copy here would hide a bug upstream).
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"TokenRing capacity must be a positive int (tokens), got {capacity!r}")
        self.capacity = capacity
        self._data: torch.Tensor | None = None
        self._start = 0   # absolute index of the oldest token kept
        self._end = 0     # absolute index one past the newest token

    @property
    def start(self) -> int:
        """Absolute index of the oldest token held (== end when empty)."""
        return self._start

    @property
    def end(self) -> int:
        """Absolute index the next appended token will get."""
        return self._end

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def free(self) -> int:
        """Tokens that can still be appended before something must be dropped."""
        return self.capacity - len(self)

    def append(self, tokens: torch.Tensor) -> int:
        """Append tokens [n, D]; returns the absolute index of the first one.

        Raises RingBufferFull when fewer than n slots are free: the caller must commit (drop_before)
        first; losing audio silently is never right.
        """
        if tokens.ndim != 2:
            raise ValueError(f"TokenRing.append expects tokens [n, D], got shape {tuple(tokens.shape)}")
        self._check_like(tokens)
        n = tokens.shape[0]
        if n > self.free:
            raise RingBufferFull(
                f"TokenRing: cannot append {n} tokens, only {self.free} of {self.capacity} slots free "
                f"(holding tokens {self._start}..{self._end - 1}); drop_before() a commit point first")
        first = self._end
        if n:
            slots = self._slots(first, first + n)
            self._data[slots] = tokens
            self._end += n
        return first

    def window(self, from_index: int | None = None, to_index: int | None = None) -> torch.Tensor:
        """Tokens [from_index, to_index) as a new [m, D] tensor (a copy: later appends may reuse the slots).

        Defaults: from the oldest token held to the newest. Indices outside what is held raise IndexError.
        """
        lo = self._start if from_index is None else from_index
        hi = self._end if to_index is None else to_index
        if not self._start <= lo <= hi <= self._end:
            raise IndexError(f"TokenRing.window({lo}, {hi}): the buffer holds tokens [{self._start}, {self._end})")
        if self._data is None:
            raise IndexError("TokenRing.window: nothing was appended yet, so the token size is unknown")
        return self._data[self._slots(lo, hi)].clone() if hi > lo else self._data[:0].clone()

    def drop_before(self, index: int) -> None:
        """Forget the tokens before absolute `index` (a commit point). Dropping already dropped tokens is a no-op."""
        if index > self._end:
            raise IndexError(f"TokenRing.drop_before({index}): past the newest token (end is {self._end})")
        self._start = max(self._start, index)

    def clear(self) -> None:
        """Drop every token; indices keep counting from `end` (the stream goes on)."""
        self._start = self._end

    def _slots(self, lo: int, hi: int) -> torch.Tensor:
        return torch.arange(lo, hi, device=self._data.device) % self.capacity

    def _check_like(self, tokens: torch.Tensor) -> None:
        if self._data is None:
            self._data = torch.zeros(self.capacity, tokens.shape[1], dtype=tokens.dtype, device=tokens.device)
            return
        if tokens.shape[1] != self._data.shape[1]:
            raise ValueError(f"TokenRing.append: tokens have size {tokens.shape[1]}, the buffer holds "
                             f"size {self._data.shape[1]}")
        if tokens.dtype != self._data.dtype or tokens.device != self._data.device:
            raise ValueError(f"TokenRing.append: tokens are {tokens.dtype} on {tokens.device}, the buffer holds "
                             f"{self._data.dtype} on {self._data.device}")
