"""Next-item recommendations: one session at a time (`recommend_session`) or many live sessions
(`SessionRecommender`, one hidden state per session id, batched steps, LRU eviction)."""
from __future__ import annotations

import logging
from collections import OrderedDict

import torch

logger = logging.getLogger("gru4rec_ext")


def encode_items(item_map, items) -> tuple[torch.Tensor, torch.Tensor]:
    """Item labels -> (indices int64 [M], known bool [M]); without an item map the items are indices."""
    items = list(items)
    if item_map is None:
        idx = torch.as_tensor([int(i) for i in items], dtype=torch.int64)
        return idx, torch.ones(len(items), dtype=torch.bool)
    if not items:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool)
    enc = torch.as_tensor(item_map.encode(items)).to(torch.int64).reshape(-1)  # -1: unknown label
    known = enc >= 0
    return enc.clamp_min(0), known


def decode_items(item_map, indices: torch.Tensor) -> list:
    """Indices [..., k] -> nested lists of labels (indices themselves without an item map)."""
    if item_map is None:
        return indices.tolist()
    flat = indices.reshape(-1).cpu()
    labels = item_map.decode(flat.numpy())
    labels = labels.tolist() if hasattr(labels, "tolist") else list(labels)
    if indices.dim() <= 1:
        return labels
    k = indices.shape[-1]
    return [labels[i:i + k] for i in range(0, len(labels), k)]


def _top_k(model, out: torch.Tensor, k: int, exclude=None):
    scores = model.score(out)
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    k = min(int(k), model.n_items)
    return torch.topk(scores, k, dim=1)


@torch.no_grad()
def recommend_session(model, session_items, k: int = 20, exclude_seen: bool = False):
    """Top-k next items after the events `session_items` (labels with `model.item_map`, else indices).

    Unknown labels are skipped (logged). Returns (labels list [k], scores float tensor [k]).
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    idx, known = encode_items(model.item_map, session_items)
    if idx.numel() and model.item_map is None and (idx.min() < 0 or idx.max() >= model.n_items):
        raise ValueError(f"session_items must be item indices in [0, {model.n_items}) without an item map")
    if not bool(known.all()):
        logger.warning("recommend: %d unknown item(s) skipped", int((~known).sum()))
    idx = idx[known]
    if idx.numel() == 0:
        raise ValueError("session_items holds no item the model knows")
    device = model.Wy.device
    was_training = model.training
    model.eval()
    hidden = model.init_hidden(1, device)
    reset = torch.ones(1, dtype=torch.bool, device=device)
    for i, item in enumerate(idx.to(device)):
        out, hidden = model.step(item.view(1), reset if i == 0 else ~reset, hidden)
    exclude = None
    if exclude_seen:
        exclude = torch.zeros(1, model.n_items, dtype=torch.bool, device=device)
        exclude[0, idx.to(device)] = True
    scores, top = _top_k(model, out, k, exclude)
    model.train(was_training)
    return decode_items(model.item_map, top[0]), scores[0].cpu()


class SessionRecommender:
    """Live sessions: a hidden state per session id in a preallocated [L, S, H] tensor.

    `update(session_ids, items)` advances each listed session by its event (one batched step) and
    returns its top-k next items; a session seen for the first time starts from zero; when all
    `max_sessions` slots are taken, the least recently updated session is evicted. `end(id)` frees
    a session's slot. Unknown items leave their session's state unchanged.
    """

    def __init__(self, model, item_map=None, k: int = 20, max_sessions: int = 100_000, exclude_seen: bool = False):
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if int(max_sessions) < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if exclude_seen:
            raise NotImplementedError("SessionRecommender(exclude_seen=True) is not implemented; use "
                                      "model.recommend(..., exclude_seen=True) per session")
        self.model = model.eval()
        self.item_map = item_map if item_map is not None else model.item_map
        self.k, self.max_sessions = int(k), int(max_sessions)
        self.device = model.Wy.device
        self.hidden = model.init_hidden(self.max_sessions, self.device)
        self.slots: OrderedDict = OrderedDict()  # session id -> slot, least recently used first
        self.free = list(range(self.max_sessions - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.slots)

    def __contains__(self, session_id) -> bool:
        return session_id in self.slots

    def _slot(self, session_id) -> tuple[int, bool]:
        if session_id in self.slots:
            self.slots.move_to_end(session_id)
            return self.slots[session_id], False
        if not self.free:
            evicted, slot = self.slots.popitem(last=False)
            logger.debug("SessionRecommender: evicted session %r", evicted)
            self.free.append(slot)
        slot = self.free.pop()
        self.slots[session_id] = slot
        return slot, True

    def end(self, session_id) -> None:
        """Forget a session (its slot becomes free); unknown ids are ignored."""
        slot = self.slots.pop(session_id, None)
        if slot is not None:
            self.free.append(slot)

    @torch.no_grad()
    def update(self, session_ids, items):
        """Advance sessions by one event each -> (top-k labels [B][k], scores float tensor [B, k]).

        A session id listed twice in one call is processed in order (in several batched steps).
        """
        session_ids, items = list(session_ids), list(items)
        if len(session_ids) != len(items):
            raise ValueError(f"session_ids and items must have the same length, got {len(session_ids)} "
                             f"and {len(items)}")
        if not session_ids:
            return [], torch.zeros(0, self.k)
        if len(set(session_ids)) < len(session_ids):
            return self._update_in_rounds(session_ids, items)
        idx, known = encode_items(self.item_map, items)
        if self.item_map is None and (idx.min() < 0 or idx.max() >= self.model.n_items):
            raise ValueError(f"items must be item indices in [0, {self.model.n_items}) without an item map")
        slots, fresh = zip(*(self._slot(s) for s in session_ids))
        slots = torch.as_tensor(slots, dtype=torch.int64, device=self.device)
        reset = torch.as_tensor(fresh, dtype=torch.bool, device=self.device)
        idx, known = idx.to(self.device), known.to(self.device)
        h_old = self.hidden.index_select(1, slots).masked_fill_(reset.view(1, -1, 1), 0)
        out, h_new = self.model.step(idx, reset, h_old)
        h_new = torch.where(known.view(1, -1, 1), h_new, h_old)
        out = torch.where(known.view(-1, 1), out, h_old[-1])
        self.hidden.index_copy_(1, slots, h_new)
        scores, top = _top_k(self.model, out, self.k)
        return decode_items(self.item_map, top), scores.cpu()

    def _update_in_rounds(self, session_ids, items):
        order, rounds = {}, []
        for i, s in enumerate(session_ids):
            r = order.get(s, 0)
            order[s] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(i)
        labels, scores = [None] * len(items), torch.zeros(len(items), min(self.k, self.model.n_items))
        for rows in rounds:
            lab, sc = self.update([session_ids[i] for i in rows], [items[i] for i in rows])
            for j, i in enumerate(rows):
                labels[i] = lab[j]
                scores[i] = sc[j]
        return labels, scores
