{#- A month of a recurring price, in minor units: unit amount x quantity normalised to a month
    by its billing cycle (day x 365/12, week x 52/12, month / frequency, year / 12; each over
    the cycle's frequency). `double precision`: DuckDB's `double`, and PostgreSQL's name of it. -#}
{% macro monthly_amount(unit_amount, quantity, interval, frequency) -%}
    (cast({{ unit_amount }} as double precision) * {{ quantity }}
        * case {{ interval }}
            when 'day' then 365.0 / 12
            when 'week' then 52.0 / 12
            when 'month' then 1.0
            when 'year' then 1.0 / 12
          end
        / {{ frequency }})
{%- endmacro %}

{#- One row per item (`items[]`) of each row of `relation` (subscriptions, or states of them),
    with what the subscription is billed for it (docs/models.md, "Where an amount comes from"):
    the item's price, product, quantity, whether it recurs, the price's billing cycle, base unit
    amount and currency (`unit_amount`, `unit_currency_code`) and `tax_mode`; the subscription's
    `currency_code` and the `country_code` of its address; `billed_unit_amount`, what a unit is
    billed in that currency, tax excluded, before discount, and `amount_source`, where it comes
    from: `override` (the price's unit_price_overrides entry for that currency and country),
    `base` (its unit_price, in that currency), `billed` (what the subscription's newest
    transaction billed for the price: subscription_billed_prices), `unknown` (none of these:
    null, counted in no MRR); `tax_rate`, the rate taken out of a tax-inclusive amount; and
    `monthly_amount` (`monthly_amount` of billed_unit_amount; null for an item that does not
    recur, or whose amount is unknown).
    `relation` has `currency_code`, `address_id` and `items_column`; `columns`: its columns
    carried along, as they are named there (`status as subscription_status` renames one).
    `as_of`: one of `columns`, a timestamp: what a transaction billed is then the line standing
    at that instant (subscription_billed_lines: a state of the history is billed what its own
    period was), not the newest (within a second after it: a renewal's transaction and its
    event are stamped apart). -#}
{% macro subscription_items(relation, id_column, columns, items_column='items', as_of=none) -%}
{%- set names = [] -%}
{%- for column in columns -%}{%- do names.append(column.split(' as ')[-1].strip()) -%}{%- endfor -%}
select
    a.subscription_id,
    {%- for name in names %}
    a.{{ name }},
    {%- endfor %}
    a.price_id,
    a.product_id,
    a.item_status,
    a.quantity,
    a.recurring,
    a.billing_interval,
    a.billing_frequency,
    a.unit_amount,
    a.unit_currency_code,
    a.tax_mode,
    a.currency_code,
    a.country_code,
    a.amount_source,
    a.tax_rate,
    a.billed_unit_amount,
    case when a.recurring then {{ monthly_amount('a.billed_unit_amount', 'a.quantity', 'a.billing_interval',
                                                 'a.billing_frequency') }} end as monthly_amount
from (
    select
        p.*,
        case
            when p.catalogue_amount is not null and p.tax_mode_applied = 'external' then p.catalogue_source
            when p.catalogue_amount is not null and p.tax_mode_applied = 'internal' and p.billed_tax_rate is not null
                then p.catalogue_source
            when p.billed_unit_subtotal is not null then 'billed'
            else 'unknown'
        end as amount_source,
        case
            when p.catalogue_amount is not null and p.tax_mode_applied = 'internal' and p.billed_tax_rate is not null
                then p.billed_tax_rate
        end as tax_rate,
        {{ amount("case
            when p.catalogue_amount is not null and p.tax_mode_applied = 'external' then p.catalogue_amount
            when p.catalogue_amount is not null and p.tax_mode_applied = 'internal' and p.billed_tax_rate is not null
                then p.catalogue_amount - " ~ included_tax('p.catalogue_amount', 'p.billed_tax_rate') ~ "
            when p.billed_unit_subtotal is not null then p.billed_unit_subtotal
        end") }} as billed_unit_amount
    from (
        select
            i.*,
            coalesce(i.override_amount, case when i.unit_currency_code = i.currency_code then i.unit_amount end)
                as catalogue_amount,
            case when i.override_amount is not null then 'override' when i.unit_currency_code = i.currency_code then 'base' end
                as catalogue_source,
            case coalesce(i.tax_mode, 'account_setting')
                when 'account_setting' then '{{ var("account_tax_mode") }}'
                else i.tax_mode
            end as tax_mode_applied
        from (
            select
                e.*,
                addr.country_code,
                b.unit_subtotal as billed_unit_subtotal,
                b.tax_rate as billed_tax_rate,
                {{ amount(override_amount('e.price', 'addr.country_code', 'e.currency_code')) }} as override_amount
            from (
                select
                    s.{{ id_column }} as subscription_id,
                    {%- for column in columns %}
                    s.{{ column }},
                    {%- endfor %}
                    s.currency_code,
                    s.address_id,
                    item.value->'price' as price,
                    item.value->'price'->>'id' as price_id,
                    item.value->'price'->>'product_id' as product_id,
                    item.value->>'status' as item_status,
                    cast(item.value->>'quantity' as bigint) as quantity,
                    -- (an item of a transaction, which an inferred state lists, does not say: its price's cycle does)
                    coalesce(cast(item.value->>'recurring' as boolean),
                             item.value->'price'->'billing_cycle'->>'interval' is not null) as recurring,
                    item.value->'price'->'billing_cycle'->>'interval' as billing_interval,
                    cast(item.value->'price'->'billing_cycle'->>'frequency' as bigint) as billing_frequency,
                    {{ amount("item.value->'price'->'unit_price'->>'amount'") }} as unit_amount,
                    item.value->'price'->'unit_price'->>'currency_code' as unit_currency_code,
                    item.value->'price'->>'tax_mode' as tax_mode
                from {{ relation }} as s,
                    {{ json_array_elements('s.' ~ items_column, none, 'item') }}
            ) as e
            left join {{ ref('stg_customer_addresses') }} as addr on addr.address_id = e.address_id
            {%- if as_of %}
            left join {{ ref('subscription_billed_lines') }} as b
                on b.subscription_id = e.subscription_id and b.price_id = e.price_id and b.currency_code = e.currency_code
                and (b.billed_from is null or b.billed_from <= e.{{ as_of }} + interval '1 second')
                and (b.billed_to is null or b.billed_to > e.{{ as_of }} + interval '1 second')
            {%- else %}
            left join {{ ref('subscription_billed_prices') }} as b
                on b.subscription_id = e.subscription_id and b.price_id = e.price_id and b.currency_code = e.currency_code
            {%- endif %}
        ) as i
    ) as p
) as a
{%- endmacro %}

{#- The amount (text) of the first of `price`'s unit_price_overrides that names `country` and
    is in `currency`, or null: what Paddle bills a customer in that country in that currency. -#}
{% macro override_amount(price, country, currency) -%}
    {{ return(adapter.dispatch('override_amount')(price, country, currency)) }}
{%- endmacro %}

{% macro default__override_amount(price, country, currency) -%}
    (select o.value->'unit_price'->>'amount'
     from jsonb_array_elements({{ price }}->'unit_price_overrides') with ordinality as o(value, position)
     where o.value->'unit_price'->>'currency_code' = {{ currency }}
       and o.value->'country_codes' @> jsonb_build_array({{ country }})
     order by o.position
     limit 1)
{%- endmacro %}

{% macro duckdb__override_amount(price, country, currency) -%}
    (select o.value->'unit_price'->>'amount'
     from json_each({{ price }}->'unit_price_overrides') as o
     where o.value->'unit_price'->>'currency_code' = {{ currency }}
       and list_contains(json_extract_string(o.value->'country_codes', '$[*]'), {{ country }})
     order by cast(o.key as integer)
     limit 1)
{%- endmacro %}

{#- The tax an amount `amount` (minor units) includes at `rate` (the text of a decimal, as a
    transaction line's `tax_rate`: "0.19"): amount x rate / (1 + rate), rounded half up to a
    minor unit, in whole numbers (the rate to 6 decimal places), so that no floating point
    moves a minor unit. -#}
{% macro included_tax(amount, rate) -%}
    {{ return(adapter.dispatch('included_tax')(amount, rate)) }}
{%- endmacro %}

{% macro default__included_tax(amount, rate) -%}
    div(cast({{ amount }} as numeric) * 2 * round(cast({{ rate }} as numeric) * 1000000)
        + 1000000 + round(cast({{ rate }} as numeric) * 1000000),
        2 * (1000000 + round(cast({{ rate }} as numeric) * 1000000)))
{%- endmacro %}

{% macro duckdb__included_tax(amount, rate) -%}
    ((cast({{ amount }} as hugeint) * 2 * cast(round(cast({{ rate }} as decimal(20, 10)) * 1000000) as hugeint)
        + 1000000 + cast(round(cast({{ rate }} as decimal(20, 10)) * 1000000) as hugeint))
     // (2 * (1000000 + cast(round(cast({{ rate }} as decimal(20, 10)) * 1000000) as hugeint))))
{%- endmacro %}

{#- Whether an item counts in MRR: a recurring, billed item (`billed_item`) of a subscription whose
    status is `active` (trialing, paused, past-due and canceled subscriptions add nothing). One
    rule for mrr_daily, mrr_movements and the tests that recompute them. -#}
{% macro counts_in_mrr(status, recurring, item_status) -%}
    ({{ status }} = 'active' and {{ recurring }} and {{ billed_item(item_status) }})
{%- endmacro %}

{#- Whether an item of a subscription is billed: its status `active` (Paddle's item statuses:
    `trialing` is not billed yet, `inactive` no longer; an item without one counts as active). -#}
{% macro billed_item(status) -%}
    coalesce({{ status }}, 'active') = 'active'
{%- endmacro %}

{#- An amount of the API (a string of digits, in minor units) as a number: numeric(38, 0), not
    bigint, as the API's amounts are strings with no bound (one beyond 2^63 would fail a cast to
    bigint and with it the whole build). -#}
{% macro amount(text) -%}
    cast({{ text }} as numeric(38, 0))
{%- endmacro %}

{#- Whether an MRR off by up to `bound` (null: not known) may be more than the tolerance (var
    mrr_tolerance) off the truth: within it whichever way it is off when bound <= tolerance x
    (mrr - bound). mrr_daily's flagged and flagged_unless_defaults. -#}
{% macro beyond_tolerance(bound, mrr) -%}
    ({{ bound }} is null or {{ bound }} * (1 + {{ var('mrr_tolerance') }}) > {{ var('mrr_tolerance') }} * {{ mrr }})
{%- endmacro %}

{#- When a subscription's state stands from: `valid_from`, or, the subscription paused or
    canceled since more than a second before it (`stopped_at`: its `paused_at`, `canceled_at`,
    which Paddle sets as the status changes, a few milliseconds before `updated_at`; a change
    made since moves `updated_at` on), from then, not before its creation (`created_at`). -#}
{% macro stands_from(valid_from, stopped_at, created_at) -%}
    case when {{ stopped_at }} < {{ valid_from }} - interval '1 second' then greatest({{ stopped_at }}, {{ created_at }})
         else {{ valid_from }} end
{%- endmacro %}
