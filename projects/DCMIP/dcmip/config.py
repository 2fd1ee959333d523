"""Config keys of the unsupervised re-ID plugin.

Every key the plugin reads lives under ``cfg.UNSUP`` and is declared here with its default.
Defaults follow ``METHODS.md``: the shared loop (§1), O2CAP (§2), Cluster Contrast (§3) and
DCMIP (§4). Method-specific configs in ``configs/`` override them.
"""
from fastreid.config import CfgNode as CN


def add_dcmip_config(cfg):
    """Declare the ``UNSUP`` node on a fastreid config (in place) and return it."""
    _C = cfg
    _C.UNSUP = CN()
    # Training iterations per epoch; every epoch starts with a fresh clustering (METHODS §1).
    _C.UNSUP.ITERS = 400
    # MiB of decoded train images (uint8, at INPUT.SIZE_TEST) each process keeps from the first
    # epoch's feature extraction to the next ones, which then read and decode nothing: 24 KiB an
    # image at 128x64, 96 KiB at 256x128 (MSMT17's 32,621: 3.1 GB). What does not fit is decoded
    # every epoch (logged once). The features are identical either way. 0 = no cache.
    _C.UNSUP.FEATURE_CACHE_MB = 4096
    # Keep memory the process frees for reuse instead of returning it to the operating system
    # (glibc's mmap and trim thresholds raised to 1 GiB; dcmip/engine/allocator.py). On the CPU
    # each layer's activations otherwise cost fresh page faults: the extraction runs ~2.5x and a
    # training step ~1.15x faster with it, bit-identical. The process keeps its peak heap.
    _C.UNSUP.CPU_KEEP_FREED_MEMORY = True
    # Log NMI / ARI of the pseudo labels against the true identities when the dataset has them.
    # They are statistics only: true identities never reach the loss.
    _C.UNSUP.LABEL_STATS = True
    # Seed of every random choice of the run (parameters, samplers, augmentation): same seed,
    # same machine -> same pseudo labels and metrics. The only seed: fastreid 1.4.0 has no SEED
    # key and its default_setup seeds from the clock, which dcmip's run set-up replaces by this
    # (logged as "seed <n> (UNSUP.SEED)"). Every process of a multi-GPU run uses it.
    _C.UNSUP.SEED = 0
    # Train images that cannot be opened or decoded: "error" stops naming the files,
    # "skip" drops them and logs how many (checked once, before the first epoch).
    _C.UNSUP.CORRUPT_IMAGES = "error"
    # Evaluation result that picks model_best (and, in DCMIP stage 2, student or teacher):
    # "mAP" (the authors' code), "metric" (fastreid's (mAP + Rank-1) / 2), or any other key of
    # the evaluator's results, e.g. "Rank-1".
    _C.UNSUP.SELECT_METRIC = "mAP"
    # Test-set evaluator: "blocked" (dcmip.evaluation: exact, the same numbers as fastreid's in
    # blocks of queries, never the full distance matrix; no TEST.AQE / RERANK / ROC) or
    # "fastreid" (fastreid's ReidEvaluator: argsorts the full matrix, slow without its Cython).
    _C.UNSUP.EVALUATOR = "blocked"
    # How the SOLVER.WARMUP_ITERS warm-up advances: "epoch" (the authors' O2CAP scheduler,
    # stepped once per epoch: the factor is held for a whole epoch at the value of the epoch's
    # first iteration, a staircase) or "iter" (fastreid's, linear per iteration). The length
    # stays in iterations either way: O2CAP's 10 warm-up epochs of 400 are WARMUP_ITERS 4000.
    _C.UNSUP.WARMUP_STEP = "epoch"
    # Images per BatchNorm statistics group in training: the authors' DataParallel on 4 GPUs
    # normalises each GPU's 64 images separately (and keeps the running statistics of the
    # first group only). 0 = the whole batch of a process (fastreid's behaviour). Must divide
    # the per-process batch SOLVER.IMS_PER_BATCH / world size.
    _C.UNSUP.BN_GROUP_SIZE = 0

    # ---- data -----------------------------------------------------------------------------
    _C.UNSUP.DATA = CN()
    # Your own unlabelled cameras for DATASETS.NAMES ("CameraFolders",): a folder with one
    # sub-folder per camera (<camera>/**/*.jpg|png|bmp) or a CSV file with a path,camera header.
    # "" = $FASTREID_DATASETS/camera_folders.
    _C.UNSUP.DATA.CAMERA_FOLDERS = ""

    # ---- pictures for a person (dcmip.visualization) ---------------------------------------
    _C.UNSUP.VIS = CN()
    # After every epoch's clustering, OUTPUT_DIR/montages/epoch_<e>.png: a seeded sample of
    # clusters, one row each with its images grouped by camera, and a row of outliers (also
    # to TensorBoard when it is installed). On in the *_cpu.yml configs.
    _C.UNSUP.VIS.MONTAGE = False
    # Clusters drawn per montage (rows, plus one row of outliers).
    _C.UNSUP.VIS.CLUSTERS = 8

    # ---- clustering step (METHODS §1 steps 1-3) -------------------------------------------
    _C.UNSUP.CLUSTER = CN()
    # k-reciprocal neighbourhood size k1 and query-expansion size k2 of the Jaccard distance.
    _C.UNSUP.CLUSTER.K1 = 20
    _C.UNSUP.CLUSTER.K2 = 6
    # DBSCAN radius on the Jaccard distance and core-point neighbourhood size.
    _C.UNSUP.CLUSTER.EPS = 0.5
    _C.UNSUP.CLUSTER.MIN_SAMPLES = 4
    # kNN search: "exact" (faiss flat index) or "ivf" / "hnsw" (approximate, for very large N).
    _C.UNSUP.CLUSTER.KNN = "exact"
    # KNN "ivf": inverted lists visited per query, of round(sqrt(N)). 16 keeps recall ~0.9 up to
    # N ~ 100,000; at larger N raise it (docs/benchmarks/clustering.md, "IVF: recall against nprobe").
    _C.UNSUP.CLUSTER.IVF_NPROBE = 16
    # KNN "hnsw": search beam (efSearch); 0 = max(2 K1, 64).
    _C.UNSUP.CLUSTER.HNSW_EF_SEARCH = 0
    # Features from which the clusters are built: "student" or, in DCMIP stage 2, "teacher".
    _C.UNSUP.CLUSTER.FEATURES = "student"

    # ---- proxy memory (the loss head) -----------------------------------------------------
    _C.UNSUP.MEMORY = CN()
    # Registered name in dcmip.memory.MEMORY_HEAD_REGISTRY: "ClusterMemory" (Cluster Contrast),
    # "CameraAwareProxyMemory" (O2CAP and its variants), "DiscrepantProxyMemory" (DCMIP), or
    # "CompositeMemory" (the heads of MEMBERS trained together, docs/composite.md).
    _C.UNSUP.MEMORY.NAME = "ClusterMemory"
    # CompositeMemory only: its member heads, each registered and listed at most once, e.g.
    # ("DiscrepantProxyMemory", "CameraAwareProxyMemory"). Every member is reset from the same
    # pseudo labels, sees the same batch and updates its own memory by its own rule.
    _C.UNSUP.MEMORY.MEMBERS = ()
    # CompositeMemory only: the weight of each member's losses in the summed objective, one per
    # member; () = 1.0 each.
    _C.UNSUP.MEMORY.WEIGHTS = ()
    # CompositeMemory only: tau of each member, e.g. (0.05, 0.07) for DCMIP + O2CAP; () = TEMP for all.
    _C.UNSUP.MEMORY.MEMBER_TEMPS = ()
    # CompositeMemory only: momentum of each member, e.g. (0.1, 0.2) for DCMIP + O2CAP;
    # () = MOMENTUM for all.
    _C.UNSUP.MEMORY.MEMBER_MOMENTA = ()
    # Softmax temperature tau of the contrastive losses (0.05 Cluster Contrast / DCMIP, 0.07 O2CAP).
    _C.UNSUP.MEMORY.TEMP = 0.05
    # Weight of the old entry in the momentum update M <- normalise(m M + (1 - m) f).
    _C.UNSUP.MEMORY.MOMENTUM = 0.1
    # Cluster-memory update: "sequential" (every batch image, in batch order) or "hardest"
    # (once per cluster, with its batch image least similar to the entry). DCMIP applies it
    # to proxy A.
    _C.UNSUP.MEMORY.UPDATE = "sequential"

    # ---- sampler --------------------------------------------------------------------------
    _C.UNSUP.SAMPLER = CN()
    # Registered name in dcmip.sampling.SAMPLER_REGISTRY: "ClusterBalancedSampler" (O2CAP's
    # cluster-balanced ablations), "ProxyBalancedSampler" (O2CAP), "RandomMultipleGallerySampler"
    # (Cluster Contrast and DCMIP; "CameraDiverseSampler" is the same rule under its old name).
    _C.UNSUP.SAMPLER.NAME = "ClusterBalancedSampler"
    # Images per cluster / proxy in a batch (K); the batch holds IMS_PER_BATCH / K groups.
    _C.UNSUP.SAMPLER.NUM_INSTANCES = 4

    # ---- random erasing of the train images (INPUT.REA.ENABLED / PROB switch it) ------------
    _C.UNSUP.REA = CN()
    # "authors": the cluster-contrast / O2CAP / DCMIP RandomErasing (dcmip.data.transforms):
    # area ~ U(AREA), aspect ~ U(MIN_ASPECT, 1 / MIN_ASPECT), region filled so that it reads
    # FILL after the model's normalisation. "fastreid": torchvision's RandomErasing as fastreid
    # builds it (scale 0.02-0.33, log-uniform aspect 0.3-3.3, value INPUT.REA.VALUE).
    _C.UNSUP.REA.MODE = "authors"
    # Erased fraction of the image area, drawn uniformly (the authors' sl, sh).
    _C.UNSUP.REA.AREA = (0.02, 0.4)
    # Smallest height / width ratio of the erased region (the authors' r1; the largest is 1 / r1).
    _C.UNSUP.REA.MIN_ASPECT = 0.3
    # Value of the erased pixels after the model's (x - PIXEL_MEAN) / PIXEL_STD: the authors
    # write ImageNet's mean (0.485, 0.456, 0.406) into the already normalised tensor.
    _C.UNSUP.REA.FILL = (0.485, 0.456, 0.406)

    # ---- O2CAP (METHODS §2) ---------------------------------------------------------------
    _C.UNSUP.O2CAP = CN()
    # Losses summed into the objective; any of "offline" (Eq. 4), "online" (Eq. 5-6),
    # "merge" (Eq. 8), "intra" (Eq. 9), "base" (Eq. 2), "base2" (Eq. 3).
    _C.UNSUP.O2CAP.LOSSES = ("offline", "online")
    # K1: hard negative proxies (or clusters, for "base2") per image.
    _C.UNSUP.O2CAP.HARD_NEGATIVES = 50
    # K2: proxies associated online as positives (3 Market/MSMT17, 2 Duke, 8 VeRi).
    _C.UNSUP.O2CAP.ONLINE_POSITIVES = 3
    # w of the instance-proxy balanced similarity (Eq. 5).
    _C.UNSUP.O2CAP.BALANCE_WEIGHT = 0.15
    # Similarity ranking the online negatives Q2: "instance" (paper, Table III) or "balanced"
    # (authors' code).
    _C.UNSUP.O2CAP.ONLINE_NEGATIVES = "instance"
    # Batch reduction of the baselines' losses "base" / "base2": "mean" (plain mean over the
    # batch, the authors' baseline memory) or "per_camera" (the sum over cameras of per-camera
    # means, like the camera-aware losses).
    _C.UNSUP.O2CAP.BASELINE_REDUCTION = "mean"

    # ---- DCMIP (METHODS §4) ---------------------------------------------------------------
    _C.UNSUP.DCMIP = CN()
    # Margin r of the relaxed proxy-A term in L_cc.
    _C.UNSUP.DCMIP.MARGIN = 0.2
    # Multi-instance proxies per cluster in stage 2.
    _C.UNSUP.DCMIP.INSTANCES_PER_CLUSTER = 16
    # Epochs of stage 1 (discrepant cluster proxies); the remaining SOLVER.MAX_EPOCH - STAGE1_EPOCHS
    # epochs are stage 2 (plus multi-instance proxies and the EMA teacher). 0 disables stage 1.
    _C.UNSUP.DCMIP.STAGE1_EPOCHS = 40
    # EMA teacher momentum, per step: theta_t <- m theta_t + (1 - m) theta.
    _C.UNSUP.DCMIP.EMA_MOMENTUM = 0.999
    # BatchNorm running statistics of the EMA teacher: "forward" (the authors' code: the
    # teacher also runs in training mode on every batch, output unused, so its statistics come
    # from its own activations; only the parameters are averaged) or "ema" (no extra forward:
    # the student's running statistics are averaged into the teacher like the parameters).
    _C.UNSUP.DCMIP.TEACHER_BN = "forward"
    # Learning-rate milestones (x SOLVER.GAMMA at each) in epochs counted from the first epoch of
    # each stage, replacing SOLVER.STEPS for DCMIP: stage 2 restarts from SOLVER.BASE_LR, which
    # fastreid's absolute steps cannot express. METHODS §4 "x0.1 every 20 epochs within each
    # stage": 20 and 40, the latter reached only in the 50-epoch stage 2.
    _C.UNSUP.DCMIP.STAGE_LR_STEPS = [20, 40]
    return cfg
