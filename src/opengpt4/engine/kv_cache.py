"""A paged KV cache for the server: memory in fixed-size blocks, taken as tokens arrive.

The scheduler's sequences do not own rows of one big preallocated tensor (16 rows × the whole
context: ~6 GB for SmolLM2 in float32 before the first request). Each sequence has a *block
table*, the list of the pool blocks that hold its tokens, as in vLLM's PagedAttention: block
`table[i]` holds positions i*block_size .. (i+1)*block_size-1. The pool starts empty and grows
(up to a bound) as blocks are needed, so an idle server holds almost no KV memory and many short
requests fit where a few long ones would.

Prefix cache: a full block is named by a hash of its tokens chained to the hash of the block
before it, so equal names mean equal prefixes. A request whose prompt starts with blocks already
in the pool (a shared system prompt) takes them by reference instead of recomputing them.
Blocks nobody references keep their contents and their name, and are evicted least recently
used first when the pool needs room.

Attention over it (`PagedStep`) runs one flat batch of tokens — the decoding rows' one token each
followed by chunks of prompts — through the model, the way vLLM batches: the matrix products see
every token of the step at once; attention gathers each sequence's slots from the pool.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from opengpt4.config import ModelConfig
from opengpt4.model.transformer import decode_attention


class BlockPool:
    """Per layer, K and V as (slots, kv_heads, head_dim) with slots = blocks × block_size, plus the
    allocator: reference counts, the free list and the prefix cache's names.

    `max_blocks` bounds it (the memory budget); below the bound it grows by doubling, copying one
    layer at a time, so growing costs one layer's worth of extra memory, not the pool's. It grows
    only for live tokens: once the prefix cache holds `cached_blocks` unreferenced blocks, a new
    block is the least recently used of them. (Growing first kept every finished request's blocks:
    a 10-minute soak of 1,600 short requests took SmolLM2's server from 1.2 to 7.7 GB.)"""

    def __init__(self, config: ModelConfig, max_blocks: int, *, block_size: int = 16, device=None,
                 dtype=torch.float32, initial_blocks: int = 16, cached_blocks: int = 64) -> None:
        self.block_size, self.max_blocks, self.cached_blocks = block_size, max_blocks, cached_blocks
        self.shape = (config.n_kv_head, config.head_dim)
        self.k = [torch.zeros(0, *self.shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(0, *self.shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.initial_blocks = initial_blocks
        self.refs: list[int] = []  # per block
        self.names: list[bytes | None] = []  # per block: its prefix-cache name, once full and registered
        self.free: list[int] = []  # unreferenced, unnamed
        self.cached: dict[bytes, int] = {}  # name -> block
        self.evictable: OrderedDict[int, None] = OrderedDict()  # unreferenced, named; least recently used first

    @property
    def capacity(self) -> int:
        return len(self.refs)

    @property
    def available(self) -> int:
        """Blocks that an allocation can still get: free, evictable, or not yet grown."""
        return len(self.free) + len(self.evictable) + self.max_blocks - self.capacity

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    def stats(self) -> dict[str, int]:
        return {"blocks": self.capacity, "max_blocks": self.max_blocks, "block_size": self.block_size,
                "in_use": self.capacity - len(self.free) - len(self.evictable), "cached": len(self.cached),
                "bytes": self.nbytes}

    def allocate(self) -> int:
        if not self.free and len(self.evictable) <= self.cached_blocks and self.capacity < self.max_blocks:
            self._grow()
        if self.free:
            block = self.free.pop()
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)
            del self.cached[self.names[block]]
            self.names[block] = None
        else:  # the scheduler reserves blocks before admitting, so this is a bug, not a busy server
            raise RuntimeError(f"KV block pool exhausted ({self.max_blocks} blocks)")
        self.refs[block] = 1
        return block

    def _grow(self) -> None:
        old = self.capacity
        new = min(self.max_blocks, max(2 * old, self.initial_blocks))
        extra = (new - old) * self.block_size
        for pool in (self.k, self.v):
            for i, t in enumerate(pool):  # zeros: padded reads must see finite values (0 × NaN is NaN)
                pool[i] = torch.cat([t, t.new_zeros(extra, *self.shape)])
        self.refs += [0] * (new - old)
        self.names += [None] * (new - old)
        self.free += reversed(range(old, new))  # pop() hands out the lowest first

    def take(self, block: int) -> None:
        """One more reference to a block found in the prefix cache."""
        if self.refs[block] == 0:
            del self.evictable[block]
        self.refs[block] += 1

    def release(self, block: int) -> None:
        self.refs[block] -= 1
        if self.refs[block] == 0:
            if self.names[block] is None:
                self.free.append(block)
            else:
                self.evictable[block] = None

    def lookup(self, names: list[bytes]) -> list[int]:
        """The blocks of the longest cached prefix of `names`, each taken (referenced)."""
        hits = []
        for name in names:
            block = self.cached.get(name)
            if block is None:
                break
            self.take(block)
            hits.append(block)
        return hits

    def register(self, block: int, name: bytes) -> None:
        """Name a block that just filled. Two requests may compute the same prefix at once: the
        first name wins and the other block stays unnamed (freed when its sequence ends)."""
        if name not in self.cached:
            self.cached[name] = block
            self.names[block] = name

    def trim(self, keep: int) -> None:
        """Shrink an idle pool (no block referenced) to its `keep` most recently used named blocks,
        moved to the front: after a burst the memory goes back, the prefix cache's best stays."""
        assert not any(self.refs), "trim() is for a pool nobody reads"
        if self.capacity <= keep:
            return
        kept = list(self.evictable)[len(self.evictable) - keep :] if keep else []
        index = torch.tensor(kept, dtype=torch.long, device=self.k[0].device)
        for pool in (self.k, self.v):
            for i, t in enumerate(pool):
                pool[i] = t.view(-1, self.block_size, *self.shape)[index].flatten(0, 1)
        self.names = [self.names[b] for b in kept]
        self.refs, self.free = [0] * len(kept), []
        self.cached = {name: i for i, name in enumerate(self.names)}
        self.evictable = OrderedDict.fromkeys(range(len(kept)))

    def copy_block(self, src: int, dst: int) -> None:
        a, b = src * self.block_size, dst * self.block_size
        for pool in (self.k, self.v):
            for t in pool:
                t[b : b + self.block_size] = t[a : a + self.block_size]


def block_names(ids: list[int], block_size: int, stop_at: int | None = None, adapted: bool = False) -> list[bytes]:
    """The prefix-cache names of the full blocks of `ids`. A name hashes the block's tokens and the
    name before it. BLAKE2, not Python's hash(): with a weak hash a crafted prompt could collide
    with another user's cached block and read its keys and values. Blocks from the first one
    holding `stop_at` (the image placeholder: its pixels are not in the ids) are never named.
    adapted: the sequence runs the model's image adapters, so the same tokens hold other keys and
    values than in a plain run: its names start from another root."""
    names = []
    for start in range(0, len(ids) - block_size + 1, block_size):
        block = ids[start : start + block_size]
        if stop_at is not None and stop_at in block:
            break
        names.append(_name(names[-1] if names else _root(adapted), block))
    return names


def _root(adapted: bool) -> bytes:
    return b"image-adapters" if adapted else b""


def _name(parent: bytes, block: list[int]) -> bytes:
    return hashlib.blake2b(parent + array("q", block).tobytes(), digest_size=16).digest()


@dataclass
class Sequence:
    """One sequence's block table and the tokens whose keys and values are in it."""

    pool: BlockPool
    blocks: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    names: list[bytes] = field(default_factory=list)  # of its first full blocks, while they can be named
    nameable: bool = True  # False from the first block with an image: the ids do not say what it holds
    image_id: int | None = None
    adapted: bool = False  # runs the model's image adapters (lora.route_to_images): see block_names

    @property
    def length(self) -> int:
        return len(self.tokens)

    def reuse(self, ids: list[int], names: list[bytes]) -> int:
        """Take the blocks of the prefix cache that continue this sequence along `ids` (whose full
        blocks are called `names`): at the start, or later while every block it holds is full
        (another request may have computed the next ones since). Returns how many it took."""
        bs = self.pool.block_size
        if self.length != len(self.blocks) * bs or self.names != names[: len(self.blocks)]:
            return 0
        hits = self.pool.lookup(names[len(self.blocks) :])
        self.blocks += hits
        self.names = names[: len(self.blocks)]
        self.tokens = ids[: len(self.blocks) * bs]
        return len(hits)

    def slots(self, count: int) -> list[int]:
        """The pool slots of the next `count` positions (their blocks allocated by `grow`)."""
        bs, start = self.pool.block_size, self.length
        return [self.blocks[p // bs] * bs + p % bs for p in range(start, start + count)]

    def grow(self, count: int) -> int:
        """Allocate blocks for `count` more tokens; returns how many blocks that took."""
        need = -(-(self.length + count) // self.pool.block_size) - len(self.blocks)
        for _ in range(need):
            self.blocks.append(self.pool.allocate())
        return max(need, 0)

    def append(self, ids: list[int]) -> None:
        """The tokens `ids` are now in the cache at the next positions: name the blocks they filled."""
        bs = self.pool.block_size
        self.tokens += ids
        while self.nameable and len(self.names) < self.length // bs:
            i = len(self.names)
            block = self.tokens[i * bs : (i + 1) * bs]
            if self.image_id is not None and self.image_id in block:
                self.nameable = False
                break
            self.names.append(_name(self.names[-1] if self.names else _root(self.adapted), block))
            self.pool.register(self.blocks[i], self.names[-1])

    def fork(self) -> tuple[Sequence, int]:
        """A copy that shares this sequence's full blocks and owns a copy of its partial last
        block (the two write different tokens there next). Returns it and the blocks it allocated."""
        bs = self.pool.block_size
        full = self.length // bs
        for block in self.blocks[:full]:
            self.pool.take(block)
        child = Sequence(self.pool, self.blocks[:full], list(self.tokens), list(self.names), self.nameable,
                         self.image_id, self.adapted)
        if full < len(self.blocks):
            copy = self.pool.allocate()
            self.pool.copy_block(self.blocks[full], copy)
            child.blocks.append(copy)
            return child, 1
        return child, 0

    def free(self) -> None:
        for block in self.blocks:
            self.pool.release(block)
        self.blocks, self.tokens, self.names = [], [], []


def worst_case_blocks(prompt: int, max_new: int, n: int, block_size: int, hits: int = 0) -> int:
    """The most blocks a request can allocate: its prompt past the cache hits, then each of its n
    samples up to prompt + max_new tokens (samples after the first share the prompt's full blocks
    and copy its partial one)."""
    total = -(-(prompt + max_new) // block_size)
    return total - hits + (n - 1) * (total - prompt // block_size)


class PagedStep:
    """One forward of a flat batch: the decoding sequences' one token each, then prompt chunks.

    Built once for all layers: each token's position and pool slot, each decoding row's key slots
    (whole blocks gathered, padded to the longest row and masked), each chunk's key slots. Blocks
    for the new tokens must already be allocated (`Sequence.grow`); `commit` records the tokens
    once the forward succeeded, so a failed forward leaves every sequence as it was."""

    def __init__(self, pool: BlockPool, decoding: list[tuple[Sequence, int]],
                 chunks: list[tuple[Sequence, list[int]]]) -> None:
        self.pool = pool
        device = pool.k[0].device
        self.entries = [(seq, [token]) for seq, token in decoding] + list(chunks)
        self.num_decoding = len(decoding)
        self.ids = [t for _, ids in self.entries for t in ids]
        self.adapted = torch.tensor([seq.adapted for seq, ids in self.entries for _ in ids], device=device)
        positions, slots = [], []
        for seq, ids in self.entries:
            positions += range(seq.length, seq.length + len(ids))
            slots += seq.slots(len(ids))
        self.positions = torch.tensor(positions, device=device)
        self.write_slots = torch.tensor(slots, device=device)
        # Where each entry's tokens sit in the flat batch, and the index of its last one.
        self.bounds, start = [], 0
        for _, ids in self.entries:
            self.bounds.append((start, start + len(ids)))
            start += len(ids)
        self.last = [hi - 1 for _, hi in self.bounds]
        self.decode_blocks, self.decode_span, self.decode_mask = None, 0, None
        if decoding:
            lengths = [seq.length + 1 for seq, _ in decoding]
            self.decode_span = max(lengths)
            self.decode_blocks = self._tables([seq for seq, _ in decoding], self.decode_span, device)
            if min(lengths) != self.decode_span:  # rows shorter than the longest read padding: masked
                seen = torch.arange(self.decode_span, device=device)[None] < torch.tensor(lengths, device=device)[:, None]
                self.decode_mask = seen[:, None, None]  # (B, 1, 1, S)
        self.buffers: dict[str, Tensor] = {}  # gather buffers, by what they hold
        self.chunk_reads = []  # per chunk: its block table (1, blocks), key span, and mask (None: plain causal)
        for seq, ids in chunks:
            start, span = seq.length, seq.length + len(ids)
            mask = None
            if start:  # query i (at position start + i) sees keys 0..start + i
                keys = torch.arange(span, device=device)[None]
                mask = keys <= torch.arange(start, span, device=device)[:, None]
            self.chunk_reads.append((self._tables([seq], span, device), span, mask))

    def _tables(self, seqs: list[Sequence], span: int, device) -> Tensor:
        count = -(-span // self.pool.block_size)
        return torch.tensor([seq.blocks[:count] + [0] * (count - len(seq.blocks[:count])) for seq in seqs],
                            device=device)

    def _gather(self, pool: Tensor, tables: Tensor, span: int, buffer: str) -> Tensor:
        """(B, kv_heads, span, head_dim) keys or values of the sequences whose block tables are given.

        Into a buffer made once per step and reused by every layer: a fresh tensor of this size
        costs its page faults again at each layer, 4x the copy itself (SmolLM2, 16 rows of 1k tokens)."""
        bs, heads = self.pool.block_size, pool.shape[1:]
        out = self.buffers.get(buffer)
        if out is None:
            out = self.buffers[buffer] = pool.new_empty(tables.numel(), bs, *heads)
        torch.index_select(pool.view(-1, bs, *heads), 0, tables.flatten(), out=out)
        return out.view(tables.shape[0], -1, *heads)[:, :span].transpose(1, 2)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q: (1, N, H, D), k and v: (1, N, H_kv, D) of the step's tokens; returns (1, N, H, D)."""
        k_pool, v_pool = self.pool.k[layer], self.pool.v[layer]
        k_pool.index_copy_(0, self.write_slots, k[0].to(k_pool.dtype))
        v_pool.index_copy_(0, self.write_slots, v[0].to(v_pool.dtype))
        out = torch.empty_like(q[0])
        d = self.num_decoding
        if d:
            keys = self._gather(k_pool, self.decode_blocks, self.decode_span, "k").to(q.dtype)
            values = self._gather(v_pool, self.decode_blocks, self.decode_span, "v").to(q.dtype)
            out[:d] = decode_attention(q[0, :d, :, None], keys, values, self.decode_mask)[:, :, 0]
        for i, ((lo, hi), (tables, span, mask)) in enumerate(zip(self.bounds[d:], self.chunk_reads, strict=True)):
            keys = self._gather(k_pool, tables, span, f"k{i}").to(q.dtype)
            values = self._gather(v_pool, tables, span, f"v{i}").to(q.dtype)
            y = F.scaled_dot_product_attention(q[:, lo:hi].transpose(1, 2), keys, values, attn_mask=mask,
                                               is_causal=mask is None, enable_gqa=True)
            out[lo:hi] = y[0].transpose(0, 1)
        return out[None]

    def commit(self) -> None:
        for seq, ids in self.entries:
            seq.append(ids)
