"""Every knob of megraph-jax with the official ME-GraphAU value it mirrors (BP4D, ResNet-50, fold 1).

The other configs start from this one and override a few fields. Any field can be overridden on the
command line: ``python main.py --config=configs/default.py --config.stage2.lam=0.01``.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """Default config: official settings for ResNet-50 on BP4D fold 1."""
  config = ml_collections.ConfigDict()

  # What to run: 'train' (stage 1, then stage 2 from stage 1, see stage2.init), 'stage1', 'stage2',
  # 'eval' (evaluate `checkpoint` on `dataset.fold`'s test split), 'folds' (mode 'train' on every fold of
  # `dataset.folds`, one run per fold in the same workdir (a sweep), then a summary averaged over folds, as the
  # paper's 3-fold protocol).
  config.mode = "train"
  config.seed = 0  # PRNG seed of initialisation, data order, augmentation and DropPath (official --seed 0)

  # ---------------------------------------------------------------- data
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "BP4D"  # official --dataset: BP4D or DISFA (names the list files); OpenGraphAU's: 'hybrid'
  #   (labels -1 = not annotated, left out of loss, weights and metrics; fold 0 = its layout without folds)
  config.dataset.root = "data/BP4D"  # official config/BP4D_config.yaml dataset_path; holds img/ and list/
  config.dataset.fold = 1  # official --fold, 1..3 (subject-independent 3-fold cross-validation); 0: no folds
  config.dataset.eval_split = "test"  # split evaluated each epoch: ME-GraphAU's test fold; OpenGraphAU: 'val'
  config.dataset.folds = (1, 2, 3)  # folds run by mode 'folds' (paper: average over 3 folds)
  config.dataset.au_names = ()  # label columns ('AU<n>'); () = the dataset's AUs (megraph_jax.task.DATASET_AUS:
  #   BP4D's 12, DISFA's 8; official num_classes 12 / 8). Set for other sets or AU subsets; N = len(au_names)
  config.dataset.image_size = 256  # px; official image_train/image_test resize to 256 before the crop
  config.dataset.crop_size = 224  # px; official --crop-size 224 (random crop in training, centre crop in test)
  config.dataset.color_jitter = True  # official image_train: ColorJitter(brightness 0.4, contrast 0.4,
  #   saturation 0.4)
  config.dataset.random_flip = True  # ME-GraphAU's image_train flips half the images; OpenGraphAU's does not
  # Synthetic AU faces (megraph_jax/data/synthetic.py), generated on first use; when enabled, `root` is
  # ignored and the set is written to `cache_dir` ('' = <workdir>/data).
  config.dataset.synthetic = ml_collections.ConfigDict()
  config.dataset.synthetic.enabled = False
  config.dataset.synthetic.cache_dir = ""  # where the synthetic set is written ('' = <workdir>/data)
  config.dataset.synthetic.num_subjects = 9  # subjects, split 3 folds by subject as BP4D
  config.dataset.synthetic.frames_per_subject = 40  # images per subject
  config.dataset.synthetic.image_size = 128  # px of the stored images
  config.dataset.synthetic.seed = 0  # generator seed (independent of `seed`)

  # ---------------------------------------------------------------- model
  config.model = ml_collections.ConfigDict()
  config.model.head = "megraph"  # 'megraph' (ME-GraphAU) or 'baseline' (backbone + linear classifier: the
  #   "backbone only" row of the paper's Table 3; mode 'stage1' only)
  config.model.backbone = "resnet50"  # official --arc: resnet18/34/50/101, swin_transformer_tiny/small/base
  config.model.neighbor_num = 4  # K of the stage-1 FGG; official yaml: BP4D 4, DISFA 3 (the paper's text: the reverse)
  config.model.metric = "dots"  # official --metric: dots, cosine or l1 (similarity for the K nearest neighbours)
  config.model.use_fgg = True  # False = "backbone + AFG" ablation row of the paper's Table 3 (stage 1 only)
  config.model.gnn_layers = 2  # GatedGCN layers of stage 2 (official 2)
  # Swin stochastic depth; None = the official preset: 0.2 Swin-T, 0.3 Swin-S, 0.5 Swin-B (ResNets: unused)
  config.model.drop_path_rate = config_dict.placeholder(float)
  config.model.dtype = "float32"  # compute dtype: float32 (official) or bfloat16 (params stay float32);
  #   float64 (params too; needs JAX_ENABLE_X64=1) for numerical checks
  config.model.precision = "default"  # matmul/conv precision of float32 compute (megraph_jax/numerics.py):
  #   'default' (JAX's: full float32 on CPU, TF32/bf16 passes on GPU/TPU, ~1e-4 from the official model there),
  #   'high' (bf16x3) or 'highest' (full float32 everywhere: the official model's numbers to ~1e-7). Official: fp32
  config.model.layout = "auto"  # 1x1 convs and Linears as 2-D matmuls: 'auto' (on XLA:CPU only, where they are
  #   2-7x faster; plain nnx.Conv/Linear on GPU/TPU), 'cpu' or 'plain' to force one. Same parameters and numbers
  config.model.remat = False  # rematerialise backbone blocks in the backward pass: ResNet-50 stage-2 step at batch 64
  #   9.3 -> 3.9 GiB compiled memory on XLA:CPU, for one more backbone forward per step
  config.model.init = "imagenet"  # initial backbone of a fresh stage 1: 'imagenet' (official: always; training refuses
  #   to start without the file) or 'random' (from scratch, asked for explicitly). Stage 2 starts from stage 1.
  config.model.imagenet_weights = "checkpoints"  # the ImageNet .pth, or a folder holding it under the official name
  #   (official: checkpoints/resnet50-19c8e357.pth, checkpoints/swin_base_patch4_window7_224.pth; one folder serves
  #   every backbone of a sweep). Nothing downloads.

  # ---------------------------------------------------------------- optimisation
  config.batch_size = 64  # global training batch (all devices); official -b 64
  config.eval_batch_size = 64  # global eval batch; the last batch is padded and masked
  config.optim = ml_collections.ConfigDict()
  config.optim.weight_decay = 5e-4  # AdamW decoupled decay, multiplied by the lr as torch; official --weight-decay 5e-4
  config.optim.b1 = 0.9  # AdamW beta1 (official 0.9)
  config.optim.b2 = 0.999  # AdamW beta2 (official 0.999)
  config.optim.eps = 1e-8  # AdamW epsilon (official --optimizer-eps 1e-8)
  config.optim.clip_norm = 0.0  # global-norm gradient clipping; 0 = off (official: none)
  config.optim.sam_rho = 0.0  # SAM around AdamW: rho of the ascent step; 0 = off (ME-GraphAU: plain AdamW;
  #   OpenGraphAU's train_stage*.py: SAM(rho=2.0, adaptive=True), the second pass leaving BatchNorm statistics)
  config.optim.sam_adaptive = True  # ASAM: e(w) = rho w^2 g / ||w g|| (official OpenGraphAU adaptive=True)
  config.optim.class_weights = "labels"  # 'labels': 1/positive rate from the training labels, normalised to sum N;
  #   the rate of an AU is #1 / #(0 or 1): BP4D's 9 (not coded) is neither positive nor counted
  #   (megraph_jax.task.class_weights, which data_pipelines.export also writes to NAME_weight_fold{k}.txt; the
  #   official tool counts 9 as positive, so its files differ where a training list holds 9s); 'file': read that file

  # Per stage. lr schedule: lr = learning_rate * (1 + cos(pi * t / T)) / 2, t the global iteration,
  # T = epochs * steps_per_epoch, no warmup (official utils.adjust_learning_rate).
  config.stage1 = ml_collections.ConfigDict()
  config.stage1.epochs = 20  # official -e 20
  config.stage1.learning_rate = 1e-4  # official README stage-1 command: -lr 0.0001
  config.stage1.trainable_params = ".*"  # regex (full match) over '/'-joined param paths; others frozen. Official: all
  config.stage1.decay_params = ".*"  # regex of trained params that get weight decay. Official: all (torch AdamW over
  #   net.parameters())
  config.stage2 = ml_collections.ConfigDict()
  config.stage2.epochs = 20  # official -e 20
  config.stage2.learning_rate = 1e-5  # official README BP4D ResNet-50 stage-2 command: no -lr, so conf.py's 1e-5
  config.stage2.lam = 0.05  # lambda of Eq. 8; official README BP4D ResNet-50 stage 2: --lam 0.05
  config.stage2.init = "last"  # stage-1 checkpoint stage 2 starts from (mode 'train', or 'stage2' without init_from):
  #   'last' (official: train_stage2.py --resume names a stage-1 file saved at its end; no selection) or 'best' (stage
  #   1's best test-fold mean F1: selected on the test fold, and the results tables say so) or 'none' (no stage 1:
  #   the backbone per model.init, the heads random; not the paper's recipe, asked for explicitly)
  config.stage2.trainable_params = ".*"
  config.stage2.decay_params = ".*"

  # ---------------------------------------------------------------- devices
  config.sharding = ml_collections.ConfigDict()
  config.sharding.params = "replicated"  # 'replicated' (data parallel) or 'fsdp' (params and AdamW moments split
  #   over the devices: 1/n of their memory per device, same results)
  config.sharding.fsdp_min_size = 2**14  # fsdp: arrays with fewer elements stay replicated

  # ---------------------------------------------------------------- checkpoints, init, logging
  config.checkpoint = ""  # mode 'eval': our stage dir / best dir / model dir (model.json), or an official .pth
  config.init_from = ""  # initialise the first trained stage from this (our checkpoint dir or official .pth); when
  #   '', stage 2 starts from stage 1 in the same workdir (stage2.init) and mode 'stage2' needs that stage 1
  config.keep_checkpoints = 2  # most recent checkpoints kept per stage (the best one is kept separately)
  config.eval_every_epochs = 1  # evaluate on the test split (and maybe save the best) every n epochs (official 1)
  config.log_every_steps = 50  # train-loss / lr / img/s scalars every n steps
  config.stop_after_steps = 0  # testing: act as if preempted after this many optimizer steps of this process (0 = off)
  return config
