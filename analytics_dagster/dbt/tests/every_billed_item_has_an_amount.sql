{{ config(meta={'dagster': {'ref': {'name': 'stg_subscription_items'}}}, severity='warn') }}
-- Every item MRR counts today (a recurring, billed item of an active subscription) has an amount
-- the warehouse can say (amount_source, docs/models.md): one whose price states no amount in the
-- subscription's currency, nor a tax-inclusive one's tax rate, and that no transaction of the
-- subscription billed yet, is `unknown`, counted in no MRR. A warning: it stops nothing, and
-- names the items (a renewal, once synced, bills them).
select subscription_item_id, subscription_id, price_id, currency_code, country_code, unit_currency_code, tax_mode
from {{ ref('stg_subscription_items') }}
where {{ counts_in_mrr('subscription_status', 'recurring', 'item_status') }}
    and amount_source = 'unknown'
