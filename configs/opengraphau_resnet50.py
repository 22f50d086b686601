"""OpenGraphAU, ResNet-50, 41 AUs: train or fine-tune on data in OpenGraphAU's layout (its ``hybrid`` set or yours).

  python main.py --config=configs/opengraphau_resnet50.py --workdir=runs/ogau_r50 --config.dataset.root=data/hybrid \
      --config.init_from=checkpoints/OpenGprahAU-ResNet50_first_stage.pth      # fine-tune from the released file

Layout (official OpenGraphAU/dataset.py): ROOT/img/..., ROOT/list/hybrid_{train,val,test}_img_path.txt, the
matching hybrid_*_label.txt (41 columns, model order: ``megraph_jax.task.OPENGRAPHAU_AUS``; -1 = the source set
does not annotate that AU: left out of loss, metrics and class weights) and hybrid_train_weight.txt. Another
name than 'hybrid' needs the same file names with that name and ``dataset.au_names`` set.
Official (train_stage1/2.py, conf.py, README): SAM(rho 2, adaptive) around AdamW (lr 2e-5 stage 1, 1e-5 stage 2,
weight decay 5e-4), 20 epochs, ImageNet-initialised backbone, Resize(256) + RandomCrop(224) + ColorJitter, no
flip, evaluated on 'val' every epoch; stage 2 starts from stage 1 (``--resume``) and trains the same loss (no
edge term). The README trains at batch 512 on several GPUs; 64 here (conf.py's default). Without ``init_from``
stage 1 starts from ImageNet (``model.imagenet_weights``). Each SAM step costs two forward/backward passes.
Expected: the released models' figures are not reproducible without the 2-million-image hybrid set; nothing
was measured here beyond the tests' synthetic runs (tests/test_opengraphau_finetune.py).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """OpenGraphAU, ResNet-50, both stages."""
  config = default.get_config()
  config.dataset.name = "hybrid"  # official --dataset hybrid: 41 AUs (task.OPENGRAPHAU_AUS)
  config.dataset.root = "data/hybrid"
  config.dataset.fold = 0  # OpenGraphAU's layout has no folds
  config.dataset.folds = (0,)
  config.dataset.eval_split = "val"  # official train_stage*.py evaluate on hybrid_val_*
  config.dataset.random_flip = False  # official OpenGraphAU image_train: the flip is commented out
  config.model.head = "opengraphau"
  config.optim.class_weights = "file"  # official: hybrid_train_weight.txt
  config.optim.sam_rho = 2.0  # official SAM(rho=2.0, adaptive=True)
  config.stage1.learning_rate = 2e-5  # official README stage-1 command: -lr 0.00002
  config.stage2.learning_rate = 1e-5  # official README stage-2 command: -lr 0.00001
  return config
