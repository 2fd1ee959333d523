"""Data: the generated demo dataset and the Market-format datasets registered in fastreid.

Importing this package registers ``DemoMarket`` and ``MarketSplit`` in fastreid's
``DATASET_REGISTRY`` (see :mod:`dcmip.data.datasets`); :mod:`dcmip.data.demo` makes the demo
data and needs neither torch nor fastreid.
"""
from .datasets import DemoMarket, MarketFormat, MarketSplit, parse_market_folder, split_identities
from .demo import generate_demo_dataset

__all__ = ["DemoMarket", "MarketFormat", "MarketSplit", "parse_market_folder", "split_identities",
           "generate_demo_dataset"]
