"""Data: the generated demo dataset, the Market-format datasets and your own cameras' folders,
registered in fastreid.

Importing this package registers ``DemoMarket``, ``DemoTwoCameras``, ``MarketSplit`` and
``MarketSplitTwoCameras`` (see
:mod:`dcmip.data.datasets`) and ``CameraFolders`` (unlabelled, see
:mod:`dcmip.data.camera_folders`) and ``MSMT17TrainVal`` (MSMT17's train + val lists, see
:mod:`dcmip.data.msmt17`) in fastreid's ``DATASET_REGISTRY``; :mod:`dcmip.data.demo`
makes the demo data and needs neither torch nor fastreid.
"""
from .camera_folders import CameraFolders, list_images
from .datasets import (DemoMarket, DemoTwoCameras, MarketFormat, MarketSplit, MarketSplitTwoCameras,
                       parse_market_folder, split_identities)
from .demo import generate_demo_dataset
from .msmt17 import MSMT17TrainVal

__all__ = ["CameraFolders", "list_images", "DemoMarket", "DemoTwoCameras", "MarketFormat", "MarketSplit",
           "MarketSplitTwoCameras",
           "parse_market_folder", "split_identities", "generate_demo_dataset", "MSMT17TrainVal"]
