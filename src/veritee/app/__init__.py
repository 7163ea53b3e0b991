"""Authentic execution: distributed, event-driven apps across attested modules.

What other packages (the CLI, the demo, the benchmark) use: the descriptor (``descriptor``),
the deployer (``deployer.Deployer``, and ``changes`` for update/add/disable/reattest), the
deployment state (``state``), the user's end of direct connections (``user.UserTool``), the
node agent (``server.serve``) and its client (``client.NodeClient``), the status report
(``status.collect``), local clusters of processes (``cluster.LocalCluster``), and the errors
(``errors``). Modules are imported where they are used: the CLI starts light.

See docs/apps.md.
"""
