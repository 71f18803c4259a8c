"""API Management policies: documents, expressions (:mod:`tlsgate.policy.csharp`) and the
object model they run against (:mod:`tlsgate.policy.model`)."""
