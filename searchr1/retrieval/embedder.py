"""Text -> unit vectors, the way Search-R1's retriever computes them.

We load the model with sentence-transformers (so a wheel folder, a local folder or a hub id all
work) but run its transformer ourselves: pooling, prefixes and max length then come from config
(Search-R1: mean pooling over the attention mask, L2 normalisation, 256 tokens), and we control
batching. Texts are tokenised once, sorted by token count and padded per batch, so a batch of
short queries never pays for one long passage; on GPU the model runs in fp16.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from searchr1.models import WHEEL_PREFIX, wheel_dir
from searchr1.retrieval.config import EmbedderConfig


def resolve_model_path(model: str) -> str:
    """`wheel:<module>` -> the model folder shipped in that package; anything else unchanged."""
    if model.startswith(WHEEL_PREFIX):
        folder = wheel_dir(model.removeprefix(WHEEL_PREFIX)) / "model"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"embedder {model!r}: expected a model folder with config.json at {folder}")
        return str(folder)
    return model


def pick_device(device: str, key: str = "retrieval.embedder.device") -> str:
    """The torch device for a config value ("auto", "cpu", "cuda", "cuda:N"); `key` names it in errors."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"{key} is {device!r} but torch sees no GPU; use 'auto' or 'cpu'")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"{key} is {device!r} but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


class Embedder:
    """Encodes queries and passages into float32 rows of unit length (inner product = cosine)."""

    window_batches = 32  # texts are tokenised this many batches at a time (bounded memory)

    def __init__(self, cfg: EmbedderConfig, device_key: str = "retrieval.embedder.device"):
        from sentence_transformers import SentenceTransformer

        self.cfg = cfg
        self.device = pick_device(cfg.device, device_key)
        st = SentenceTransformer(resolve_model_path(cfg.model), device=self.device,
                                 trust_remote_code=cfg.trust_remote_code)
        self.tokenizer = st.tokenizer
        self.model = st[0].auto_model  # the bare transformer; pooling is ours (see module doc)
        self.model.eval()
        self.fp16 = cfg.fp16 and self.device.startswith("cuda")
        if self.fp16:
            self.model.half()
        self.dim = int(self.model.config.hidden_size)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encode([self.cfg.query_prefix + q for q in queries])

    def encode_passages(self, passages: Sequence[str], progress=None) -> np.ndarray:
        return self.encode([self.cfg.passage_prefix + p for p in passages], progress=progress)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], progress=None) -> np.ndarray:
        """(len(texts), dim) float32. `progress` (a tqdm bar) is advanced by the rows done.

        Texts are tokenised a window at a time (`window_batches` batches), so a 500k-passage shard never holds
        all its token lists at once; within a window they run longest first in batches of
        similar length.
        """
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        bs = self.cfg.batch_size
        window = bs * self.window_batches
        for lo in range(0, len(texts), window):
            chunk = list(texts[lo:lo + window])
            enc = self.tokenizer(chunk, max_length=self.cfg.max_length, truncation=True, padding=False)
            order = np.argsort([len(x) for x in enc["input_ids"]], kind="stable")[::-1]
            for start in range(0, len(order), bs):
                rows = order[start:start + bs]
                batch = self.tokenizer.pad({k: [enc[k][i] for i in rows] for k in enc.keys()},
                                           padding=True, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model(**batch).last_hidden_state
                out[lo + rows] = self._pool(hidden, batch["attention_mask"]).float().cpu().numpy()
                if progress is not None:
                    progress.update(len(rows))
        return out

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cfg.pooling == "cls":
            emb = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        emb = emb.float()  # pool in fp16, normalise in fp32: fp16 norms of 768-d sums lose digits
        if self.cfg.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb


def load_embedder(cfg: EmbedderConfig) -> Embedder:
    return Embedder(cfg)

