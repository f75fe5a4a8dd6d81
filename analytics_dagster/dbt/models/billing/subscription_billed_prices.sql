-- What each subscription's own transactions billed for each of its prices, in each currency:
-- the newest line that billed the price for a whole billing period (subscription_billed_lines;
-- docs/models.md, "Where an amount comes from"). Its unit subtotal (a unit's amount before
-- discount, tax excluded) is what the subscription is billed where its price states no amount
-- in the subscription's currency (Paddle converted it); its tax rate takes the tax out of a
-- tax-inclusive price.
select
    subscription_id || '/' || price_id || '/' || currency_code as billed_price_id,
    subscription_id,
    price_id,
    currency_code,
    unit_subtotal,
    tax_rate,
    transaction_id,
    line_item_id,
    billed_at
from {{ ref('subscription_billed_lines') }}
where newest = 1
