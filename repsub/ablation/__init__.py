"""Unit importance by ablation (Morcos et al. 2018): a unit's whole output set to 0 (or its mean), the drop in
the network's accuracy measured; batched and cut (the network's head runs once per image batch, its tail
once per ablated unit), exact mergeable counts, and the `importance` command.
"""

from repsub.ablation.counts import AblationCounts
from repsub.ablation.edit import ABLATIONS
from repsub.ablation.measure import ablated_forward, measure_importance, unit_means

__all__ = ["ABLATIONS", "AblationCounts", "ablated_forward", "measure_importance", "unit_means"]
