"""Data sets in the input contract of `pipelines.io`: the synthetic generator (`synthetic`) and the
importers of real public data sets (one module each: `amazon`, `myntra`, `obd`, `taobao`; `common`).

Each importer reads one source folder (layout as published upstream) and writes a data set that the rest of
the project reads like any other::

    <dst>/events/dt=YYYY-MM-DD/part-0.parquet  user_id, item_id: string; event: view|click|cart|purchase;
                                               ts: timestamp[us, UTC] (its UTC date is the partition date)
    <dst>/users.parquet                        user_id (unique) + user attribute columns
    <dst>/items.parquet                        item_id (unique), title, image_path + item attribute columns

Everything is written through `pipelines.io` (`write_input_table`, `write_input_events`,
`write_input_file`). The mapping of each data set, and what it loses, is in docs/real-data.md:

- `import_amazon`: Amazon 2018 "Video Games" histories (LLMRank / UniSRec leave-one-out files). History
  order becomes time, right-aligned so that the held-out item of every user is on the last date.
- `import_myntra`: the Myntra fashion catalogue (Kaggle "Fashion Product Images (Small)"): items and images
  only, no interactions.
- `import_obd`: the Open Bandit Dataset sample (ZOZOTOWN): impressions -> views, clicks -> clicks.
- `import_taobao`: Taobao's UserBehavior.csv (also the Tmall multi-behaviour copy): pv/fav/cart/buy ->
  view/click/cart/purchase, one partition per day of the shop's time zone; streamed, never whole in memory.

Every importer returns a small JSON-able summary dict for the CLI (`recsys import KIND --src --data`).
"""

from collections.abc import Callable
from typing import Any

from pipelines.datasets.amazon import AMAZON_EVENT_HOUR, amazon_events, amazon_platform, import_amazon
from pipelines.datasets.common import EVENT_SCHEMA, SourceLayoutError, write_events
from pipelines.datasets.myntra import import_myntra
from pipelines.datasets.obd import OBD_CLICK_DELAY_S, import_obd, obd_user_ids
from pipelines.datasets.taobao import import_taobao, taobao_item_category, taobao_wall_clock

IMPORTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "amazon": import_amazon,
    "myntra": import_myntra,
    "obd": import_obd,
    "taobao": import_taobao,
}

__all__ = ["AMAZON_EVENT_HOUR", "OBD_CLICK_DELAY_S", "EVENT_SCHEMA", "IMPORTERS", "SourceLayoutError", "amazon_events", "amazon_platform", "import_amazon",
           "import_myntra", "import_obd", "import_taobao", "obd_user_ids", "taobao_item_category",
           "taobao_wall_clock", "write_events"]  # fmt: skip
