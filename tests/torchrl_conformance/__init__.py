"""TorchRL ``ClipPPOLoss`` conformance suite for ``OffPolicyClipPPOLoss`` and ``SAPGLoss``.

What it checks
--------------
``OffPolicyClipPPOLoss`` subclasses TorchRL's ``ClipPPOLoss`` and promises that on on-policy data
(no ``"target_log_prob"`` / ``"off_policy"`` entries) it *is* ``ClipPPOLoss``; ``SAPGLoss`` with
one policy, ``aggregation="none"`` and no advantage standardisation of its own promises the same.
Every test here is differential: it builds one set of inputs, runs the stock
``torchrl.objectives.ClipPPOLoss`` and the class under test with the same constructor arguments on
deep copies of the same networks (same RNG seed, for Monte-Carlo entropies), and asserts

* outputs: every entry of ClipPPOLoss's output is present in ours with the same shape, dtype and
  value (allclose); ours may add diagnostics but no extra ``loss_*`` entry, since trainers sum them;
* gradients: ``sum(loss_*)`` back-propagated gives the same gradient on every parameter;
* errors: the same exception type (or a subclass) and a shared message fragment.

Every test is parametrised over three factories (``_harness.FACTORIES``): ``ClipPPOLoss`` itself
(the reference run against itself: it must pass everything, which proves each test is
deterministic and correct), ``OffPolicyClipPPOLoss`` and ``SAPGLoss`` (translated from
ClipPPOLoss's arguments by ``_harness._build_sapg``; its inputs get a ``"policy_id"`` column of
zeros). Cases a class cannot express are skipped with the reason (e.g. per-head entropy
coefficient mappings for ``SAPGLoss``); deliberate departures are listed in
``test_departures.py``.

Coverage: Gaussian actors (TanhNormal, IndependentNormal), reductions, ``functional``,
``separate_losses``, critic loss types and coefficients, ``clip_value``, advantage normalisation,
entropy settings, asymmetric ``clip_epsilon``; composite (Normal + Categorical) actors with and
without ``composite_lp_aggregate``; multi-agent nested keys; the value-estimator fallback; the
keyword-argument (``dispatch``) call path; loss masks; error paths; ``ESS`` shapes; key
management (``set_keys``, ``in_keys``/``out_keys``, ``state_dict``).

Provenance
----------
Our own code. The list of behaviours is inspired by what TorchRL's own test suite covers in
``pytorch/rl``, ``test/objectives/test_ppo.py`` (MIT licence); no code or text was copied from it.
"""
