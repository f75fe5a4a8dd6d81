{#- The adjustments, shaped as the API lists them (id, action, transaction_id, ..., items and
    totals as JSON): the newest snapshot of each in the event stream (`adjustment.*` events carry
    the whole adjustment), while the warehouse has no table of its own for them. -#}
{% macro raw_adjustments() -%}
select
    data->>'id' as id,
    data->>'action' as action,
    data->>'transaction_id' as transaction_id,
    data->>'subscription_id' as subscription_id,
    data->>'customer_id' as customer_id,
    data->>'currency_code' as currency_code,
    data->>'status' as status,
    data->>'reason' as reason,
    data->'items' as items,
    data->'totals' as totals,
    cast(data->>'created_at' as timestamp with time zone) as created_at,
    cast(data->>'updated_at' as timestamp with time zone) as updated_at
from (
    select
        data,
        row_number() over (partition by data->>'id' order by event_id desc) as newest
    from {{ source('analytics', 'events') }}
    where event_type like 'adjustment.%' and data->>'id' is not null
) as snapshots
where newest = 1
{%- endmacro %}
