"""Federated rounds without a transport: server state, the device step, the privacy policy, the reference loop.

* :mod:`~fedrec.federated.server_state` — round settings, cohort sampling, the server's table and optimizer.
* :mod:`~fedrec.federated.device` — what one device does in a round (train, evaluate, its private state).
* :mod:`~fedrec.federated.plan` — the run's public DP parameters, shared by server and devices.
* :mod:`~fedrec.federated.policy` — the server's privacy policy (cohort, noise on the sum, budget stop).
* :mod:`~fedrec.federated.reference` — the in-process reference loop running all of the above.

``server/`` and ``client/`` are Flower adapters over these modules; nothing here imports Flower
or the run configuration (:mod:`fedrec.runconfig` builds the objects these modules take).
"""
