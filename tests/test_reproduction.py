"""Config drift: every published config, loaded through the real loader, against the tables of
docs/reproduction.md (sections 2-5), so that the page and the configs cannot disagree."""
import argparse
import fnmatch
import glob
import os
import re

import pytest
import yaml

import dcmip  # noqa: F401
from dcmip.engine.defaults import load_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "reproduction.md")
DATASETS = ("Market-1501", "DukeMTMC-reID", "MSMT17", "VeRi-776")
KEY = re.compile(r"`([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)+)`")


def parse_tables(text):
    """[(heading, header cells, rows of cells)] of every markdown table, in order."""
    tables, heading, lines = [], "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = _cells(line)
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            assert all(len(r) == len(header) for r in rows), f"ragged table under {heading!r}"
            tables.append((heading, header, rows))
            continue
        i += 1
    return tables


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def checked_value(cell):
    """The value of a cell that holds exactly one backticked YAML value, else None."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    return yaml.safe_load(match.group(1)) if match else None


def plain(value):
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


def load(path):
    args = argparse.Namespace(config_file=os.path.join(ROOT, path), eval_only=False,
                              opts=["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False"])
    return load_cfg(args)


def get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return plain(cfg)


def read_doc():
    """shared {key: value}; per method {method: {dataset: {key: value}}}; variants
    [(config, {key: value})]; mapping [(method, dataset, config paths, own keys)]; the glob
    patterns of the configs that are not published settings."""
    shared, methods, variants, mapping, exempt = {}, {}, [], [], []
    for heading, header, rows in parse_tables(open(DOC).read()):
        col = {name: i for i, name in enumerate(header)}
        if "key" in col and "ours" in col:
            for row in rows:
                key = KEY.fullmatch(row[col["key"]]).group(1)
                shared[key] = checked_value(row[col["ours"]])
        elif "key" in col:
            table = methods.setdefault(heading, {})
            for row in rows:
                key = KEY.fullmatch(row[col["key"]]).group(1)
                for dataset in DATASETS:
                    if dataset in col and checked_value(row[col[dataset]]) is not None:
                        table.setdefault(dataset, {})[key] = checked_value(row[col[dataset]])
        elif header[:2] == ["variant", "config"]:
            keys = {i: KEY.fullmatch(h).group(1) for i, h in enumerate(header) if KEY.fullmatch(h)}
            for row in rows:
                config = checked_value(row[1])
                variants.append((config, {key: checked_value(row[i]) for i, key in keys.items()}))
        elif header[0] == "configs":
            exempt.extend(checked_value(row[0]) for row in rows)
        elif header[:3] == ["method", "dataset", "config"]:
            for row in rows:
                paths = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, checked_value(row[2]))))
                assert paths, f"docs/reproduction.md names {row[2]}, which matches no file"
                mapping.append((row[0], row[1], paths, set(KEY.findall(row[3]))))
    return shared, methods, variants, mapping, exempt


SHARED, METHODS, VARIANTS, MAPPING, EXEMPT = read_doc()
CASES = [(path, method, dataset, own) for method, dataset, paths, own in MAPPING for path in paths]


def test_the_doc_has_every_table():
    assert set(METHODS) == {"Cluster Contrast", "O2CAP", "DCMIP"}
    assert len(SHARED) >= 15 and all(v is not None for v in SHARED.values())
    assert len(VARIANTS) == 12  # Table II: Baseline1-2, CAP1-5, CAP, O2CAP1-3, O2CAP
    for method, datasets in METHODS.items():
        assert all(len(keys) >= 20 for keys in datasets.values()), method


def test_every_config_is_in_the_doc():
    """A new config needs a column (section 5) or a reason (section 6), never neither or both."""
    shipped = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yml"), recursive=True)
               if not os.path.basename(p).startswith("Base-")}
    checked = {path for path, _, _, _ in CASES}
    exempt = {p for p in shipped if any(fnmatch.fnmatch(p, pattern) for pattern in EXEMPT)}
    assert shipped - checked - exempt == set(), "configs in neither table of docs/reproduction.md"
    assert checked & exempt == set(), "configs in both tables of docs/reproduction.md"


def drift(cfg, method, dataset, own=()):
    """{key: (config value, documented value)} for every documented setting the config misses."""
    expected = dict(SHARED)
    expected.update(METHODS[method][dataset])
    return {key: (get(cfg, key), value) for key, value in expected.items()
            if key not in own and get(cfg, key) != value}


@pytest.mark.parametrize("path, method, dataset, own", CASES, ids=[c[0][len("configs/"):] for c in CASES])
def test_config_matches_the_published_settings(path, method, dataset, own):
    wrong = drift(load(path), method, dataset, own)
    assert not wrong, f"{path}: key: (config, docs/reproduction.md) {wrong}"


@pytest.mark.parametrize("path, keys", VARIANTS, ids=[v[0].split("/")[-1] for v in VARIANTS])
def test_table_ii_variant(path, keys):
    cfg = load(path)
    assert {key: get(cfg, key) for key in keys} == keys


def test_a_drifted_config_is_caught(tmp_path):
    config = tmp_path / "drifted.yml"
    config.write_text(f"_BASE_: {ROOT}/configs/DCMIP/market.yml\nUNSUP:\n  CLUSTER:\n    EPS: 0.5\n"
                      f"INPUT:\n  SIZE_TRAIN: [256, 128]\n")
    assert drift(load(str(config)), "DCMIP", "Market-1501") == {
        "UNSUP.CLUSTER.EPS": (0.5, 0.45), "INPUT.SIZE_TRAIN": ([256, 128], [320, 128])}
