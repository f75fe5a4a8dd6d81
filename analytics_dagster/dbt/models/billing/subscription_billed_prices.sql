-- What each subscription's own transactions billed for each of its prices, in each currency:
-- the newest line that billed the price for a whole billing period (docs/models.md, "Where an
-- amount comes from"). Its unit subtotal (a unit's amount before discount, tax excluded) is
-- what the subscription is billed where its price states no amount in the subscription's
-- currency (Paddle converted it); its tax rate takes the tax out of a tax-inclusive price.
-- The transactions read: those of a subscription (subscription_id), made by its checkout (origin
-- web) or a renewal (subscription_recurring), billed (billed, paid, completed or past_due); a
-- prorated line (a change within a period) bills part of a period, and is left out.
with lines as (
    select
        t.subscription_id,
        l.price_id,
        l.currency_code,
        l.transaction_id,
        l.line_item_id,
        coalesce(t.billed_at, t.created_at) as billed_at,
        l.unit_subtotal,
        l.tax_rate,
        row_number() over (
            partition by t.subscription_id, l.price_id, l.currency_code
            order by coalesce(t.billed_at, t.created_at) desc, t.created_at desc, {{ byte_order('l.transaction_id') }} desc,
                {{ byte_order('l.line_item_id') }} desc
        ) as newest
    from {{ ref('stg_transaction_line_items') }} as l
    join {{ ref('stg_transactions') }} as t on t.transaction_id = l.transaction_id
    where t.subscription_id is not null
      and t.origin in ('web', 'subscription_recurring')
      and t.status in ('billed', 'paid', 'completed', 'past_due')
      and not l.prorated
      and l.price_id is not null
      and l.unit_subtotal is not null
)

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
from lines
where newest = 1
