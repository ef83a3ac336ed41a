"""colonies-es: ColonyOS-style workflows, event-sourced on NATS JetStream."""
