"""Events for the world outside: signed durable webhooks (:mod:`.outbox`, :mod:`.sender`,
:mod:`.signature`), fed by :mod:`.hub` from the spool and the relay manager; the
suppression list (:mod:`.suppression`); the archive of accepted mail (:mod:`.archive`)."""
