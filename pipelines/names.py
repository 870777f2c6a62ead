"""The names of the output datasets and of the files several stages share: one home, imported by every stage
(`<out>/<dataset>/dt=YYYY-MM-DD/<file>`, partitions through `pipelines.io`; docs/architecture.md)."""

EMBEDDINGS = "embeddings"  # item text and image vectors
FRAMES = "frames"  # hashed, sampled, point-in-time training frames
RETRIEVER = "retriever"  # the two towers, the FAISS index, item_emb.npy
TWO_TOWER = "two_tower"  # the user tower's own top-K lists
RANKER = "ranker"  # the pointwise DCN-Mix and its diagnostics
FUNNEL = "funnel"  # the ranker trained on candidate lists, the funnel's figures
CANDIDATES = "candidates"  # published: the merged candidates of every user
SCORES = "scores"  # published: the order that validated best
REPORTS = "reports"  # the HTML evaluation report
RUNS = "runs"  # the marker of a complete day

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
ITEM_EMB_FILE = "item_emb.npy"
CROSSMODAL_FILE = "crossmodal.pt"  # embeddings/dt=D: the cross-modal encoder (image tower + text projection)
CROSSMODAL_PAIRS = (
    "crossmodal_pairs"  # embeddings/dt=D: its training pairs (title hash, image hash), .parquet
)
