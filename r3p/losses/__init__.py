"""Training losses of the motion-adapter and HTB-SR stages (TRAINING §2.1–§2.4). Images NHWC in [-1, 1]."""
from r3p.losses.basic import (adv_d_loss, adv_g_loss, density_reg_l1, masked_l1, opacity_entropy, opacity_l1,
                              r1_penalty, update_lambda)  # noqa: F401
from r3p.losses import adversarial  # noqa: F401,E402  (D losses / R1 / c-noise over D-input triples)
