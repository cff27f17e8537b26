"""State the replicas of one consumer group share through Redis (or Valkey).

`connection` names the server and keeps its secrets out of the logs, `status`
says whether it is reachable (one warning when it is lost, and the gauge), and
`dedupe` is the group's memory of delivered and in-flight keys. The limits the
group shares live with the other limits, in `forwarder.limits.fleet`.
"""
