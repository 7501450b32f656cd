-- A message being handled is claimed until its time budget ends: the same message arriving
-- meanwhile (an engine's resend on another connection, another replica) is answered AR, never
-- handled twice at once.
ALTER TABLE inbound_messages ADD COLUMN claimed_until timestamptz;

-- The operator's latest refusal, and the feeds' delivered counts and retention.
CREATE INDEX inbound_messages_refusals ON inbound_messages (answered_at DESC) WHERE ack_code IN ('AE', 'AR');
CREATE INDEX outbound_messages_delivered ON outbound_messages (destination, delivered_at) WHERE state = 'delivered';
