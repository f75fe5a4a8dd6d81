-- One row per item of a subscription as listed now (items[]): its price and product, quantity,
-- whether it recurs, the price's billing cycle, base unit amount (minor units of
-- unit_currency_code) and tax mode, and what the subscription is billed for it in its own
-- currency (currency_code): billed_unit_amount, where it comes from (amount_source), and what it
-- adds to MRR (monthly_amount: docs/models.md).
select
    subscription_id || '/' || price_id as subscription_item_id,
    *
from (
    {{ subscription_items(raw('subscriptions'), 'id', ['status as subscription_status', 'customer_id']) }}
) as items
