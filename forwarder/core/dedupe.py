"""Which event keys were delivered recently, with bounded memory.

Only *delivered* keys enter the window: a copy that arrives while the first is
still in flight is held back by the scheduler (see `ordering.py`), and a key whose
first copy was dead-lettered stays unknown so that a later copy is sent.

Memory. The window is sized for a million keys in a 256 MiB pod. An
`OrderedDict[str, float]` of UUID keys costs about 200 MB there (the key strings,
a float object per entry, the dict and its links), so the window keeps no Python
object per entry: it is an insertion-ordered doubly linked list of nodes held in
flat `array`s (a 64-bit fingerprint, a timestamp and two 32-bit links: 24 bytes a
node) plus an open-addressing hash table (linear probing, 32-bit node numbers, a
power of two at least twice the keys it holds) from fingerprint to node: 33 MB
of RSS at a million keys. Both grow geometrically, so a small or idle window
stays small; node numbers never change as the nodes grow, so growing only
rebuilds the table, one pass over the nodes, as the dict's own resizes were.
Deletion from the table shifts the rest of the cluster back, so there are no
tombstones and probes stay short however long the process runs.

The list mirrors `OrderedDict` step for step (append or move to the end, pop from
the front), which keeps its observable behaviour exactly. A ring buffer of
(fingerprint, time) would save the links, but a re-added key leaves a dead slot
in its middle: keeping the bound exact then takes spare slots and compaction
passes, which stall the event loop. A `dict[int, float]` of fingerprints still
holds two objects per entry: about 115 MB.

Fingerprints. A key is stored as `hash(key)`: for `str` that is SipHash-1-3 keyed
by 128 random bits chosen per process, 64 bits wide on 64-bit CPython. It costs
about 0.1 µs and is cached on the string, which the scheduler's dicts have
usually hashed already; a keyed 8-byte `hashlib.blake2b` measured 1.1 µs for a
UUID and 4.8 µs for a 1 KB key, for the same 64 bits. Two keys with the same
fingerprint are treated as one key. With n keys remembered, a genuinely new key
matches one of them, and is skipped as a duplicate, with probability about
n / 2**64: 5e-14 per event at n = 10**6. The random per-process key means keys
cannot be crafted to collide, unless PYTHONHASHSEED is pinned (do not pin it).
"""

from __future__ import annotations

from array import array

_NIL = -1
"""No node: the end of a link chain, and an empty table slot."""

_FIRST_CAPACITY = 64
"""Nodes allocated by the first add; capacity then doubles up to max_entries + 1."""


class DeliveredWindow:
    """Keys delivered within the last `ttl` seconds, at most `max_entries` of them.

    Insertion-ordered, so the oldest delivery is always first: expiry and
    eviction both take from the front in O(1). Timestamps are the caller's clock.
    A `ttl` <= 0 or `max_entries` <= 0 disables the window: nothing is kept.
    """

    __slots__ = (
        "_first",
        "_free",
        "_last",
        "_len",
        "_mask",
        "_next",
        "_prev",
        "_prints",
        "_slots",
        "_stamps",
        "max_entries",
        "ttl",
    )

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        # Node i is (_prints[i], _stamps[i]), linked by _prev[i] and _next[i]. Live
        # nodes run from _first to _last, oldest first; the others are chained
        # through _next from _free. Links fit 32 bits unless the bound says otherwise.
        link = "i" if max_entries < 2**31 - 1 else "q"
        self._prints: array[int] = array("q")
        self._stamps: array[float] = array("d")
        self._prev: array[int] = array(link)
        self._next: array[int] = array(link)
        self._first = self._last = self._free = _NIL
        self._len = 0
        self._slots: array[int] = array(link, [_NIL]) * 8
        self._mask = len(self._slots) - 1

    def __len__(self) -> int:
        return self._len

    def contains(self, key: str, now: float) -> bool:
        fingerprint = hash(key)
        slots, prints, mask = self._slots, self._prints, self._mask
        slot = fingerprint & mask
        while (node := slots[slot]) != _NIL:
            if prints[node] == fingerprint:
                return now - self._stamps[node] < self.ttl
            slot = (slot + 1) & mask
        return False

    def add(self, key: str, now: float) -> None:
        if self.max_entries <= 0 or not self.ttl > 0:  # a NaN ttl too: it kept nothing
            return
        if self._free == _NIL:
            self._grow()  # before the lookup, whose slot a rebuilt table would move
        # Inlined lookup and relinking: method calls would cost more than the work.
        fingerprint = hash(key)
        slots, prints, mask = self._slots, self._prints, self._mask
        prev, next_ = self._prev, self._next
        slot = fingerprint & mask
        while (node := slots[slot]) != _NIL and prints[node] != fingerprint:
            slot = (slot + 1) & mask
        last = self._last
        if node == _NIL:  # a new key: take a free node
            node = self._free
            self._free = next_[node]
            slots[slot] = node
            prints[node] = fingerprint
            self._len += 1
        elif node == last:  # already the newest: relinked after its predecessor
            last = prev[node]
        else:  # unlink it from the middle or the front
            before, after = prev[node], next_[node]
            if before == _NIL:
                self._first = after
            else:
                next_[before] = after
            prev[after] = before
        self._stamps[node] = now
        prev[node] = last
        next_[node] = _NIL
        if last == _NIL:
            self._first = node
        else:
            next_[last] = node
        self._last = node
        # As OrderedDict did: expire from the front, then evict down to the bound.
        # Neither can reach the key just added (now - now < ttl, max_entries >= 1).
        stamps, ttl = self._stamps, self.ttl
        while now - stamps[self._first] >= ttl:
            self._drop_first()
        while self._len > self.max_entries:
            self._drop_first()

    def _drop_first(self) -> None:
        """Forget the oldest key: out of the table and the list, onto the free chain.

        Never the only one (see `add`), so another node becomes the first.
        """
        node = self._first
        slots, mask = self._slots, self._mask
        slot = self._prints[node] & mask
        while slots[slot] != node:
            slot = (slot + 1) & mask
        self._vacate(slot)
        after = self._next[node]
        self._first = after
        self._prev[after] = _NIL
        self._next[node] = self._free
        self._free = node
        self._len -= 1

    def _vacate(self, slot: int) -> None:
        """Empty a table slot without a tombstone: move back each later node of the
        cluster whose probe path crosses the hole, so that lookups still reach it."""
        slots, prints, mask = self._slots, self._prints, self._mask
        later = (slot + 1) & mask
        while (node := slots[later]) != _NIL:
            # Its home is `prints[node] & mask`; it may fill the hole if that home
            # is no nearer to it than the hole is, going round the table.
            if (later - prints[node]) & mask >= (later - slot) & mask:
                slots[slot] = node
                slot = later
            later = (later + 1) & mask
        slots[slot] = _NIL

    def _grow(self) -> None:
        """Double the nodes, up to one more than max_entries (an add holds it for
        a moment before evicting), and rebuild the table for the new count.

        Only called with every node live, so each one goes into the new table.
        """
        prints, link = self._prints, self._prev.typecode
        old = len(prints)
        new = min(max(2 * old, _FIRST_CAPACITY), self.max_entries + 1)
        # A power of two at least twice the keys it will hold (the bound, but for
        # the moment in add), so it stays about half full at most.
        size = max(8, 1 << (2 * min(new, self.max_entries) - 1).bit_length())
        slots = array(link, [_NIL]) * size
        mask = size - 1
        for node, fingerprint in enumerate(prints):
            slot = fingerprint & mask
            while slots[slot] != _NIL:
                slot = (slot + 1) & mask
            slots[slot] = node
        self._slots, self._mask = slots, mask
        added = new - old
        prints.frombytes(bytes(prints.itemsize * added))
        self._stamps.frombytes(bytes(self._stamps.itemsize * added))
        self._prev.frombytes(bytes(self._prev.itemsize * added))
        self._next.extend(range(old + 1, new))
        self._next.append(_NIL)
        self._free = old
