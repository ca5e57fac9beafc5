from twisted.application.service import ServiceMaker

replichat = ServiceMaker(
    "replichat", "replichat.tap", "A replicated, persistent chat server.", "replichat"
)
