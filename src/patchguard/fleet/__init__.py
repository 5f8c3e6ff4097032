"""The host side of the fleet: enrolment, signed reports, the spool that holds them while the
server is unreachable, and the wire format both sides share."""
