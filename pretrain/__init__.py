"""replk-pretrain: semi-supervised large-scale pretraining of RepLKNet."""
