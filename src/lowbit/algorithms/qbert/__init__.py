"""Q-BERT (Shen et al., AAAI 2020). DirectQ and group-wise ranges use ``lowbit.quant``."""
