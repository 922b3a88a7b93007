//! Prices (`prices.toml`: device-hours, storage, API tokens), training cost, and serving TCO per
//! month against a hosted API with the break-even volume.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{PlanError, Result};

/// The price table shipped with the binary (`crates/plan/prices.toml`).
pub const BUILTIN_PRICES: &str = include_str!("../prices.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// When the prices were looked up (free text, shown with every cost).
    pub as_of: String,
    pub currency: String,
    #[serde(default)]
    pub note: String,
    /// Price of one device-hour by hardware name.
    pub device_hour: BTreeMap<String, f64>,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub api: Vec<ApiPrice>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub gb_month: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiPrice {
    pub name: String,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Prices {
    pub fn builtin() -> Self {
        Self::parse(BUILTIN_PRICES, Path::new("prices.toml (built in)"))
            .unwrap_or_else(|e| panic!("the shipped prices.toml is invalid: {e}"))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PlanError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses and checks a price table; errors name the file and the field.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let p: Prices = toml::from_str(text).map_err(|e| {
            let field = e.span().map(|s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!("line {line}")
            });
            PlanError::InvalidFile {
                path: path.into(),
                field: field.unwrap_or_else(|| "(toml)".into()),
                reason: e.message().to_string(),
            }
        })?;
        let bad = |field: String, reason: &str| PlanError::InvalidFile {
            path: path.into(),
            field,
            reason: reason.into(),
        };
        for (k, v) in &p.device_hour {
            if !v.is_finite() || *v < 0.0 {
                return Err(bad(format!("device_hour.{k}"), "must be a non-negative number"));
            }
        }
        if !p.storage.gb_month.is_finite() || p.storage.gb_month < 0.0 {
            return Err(bad("storage.gb_month".into(), "must be a non-negative number"));
        }
        for (i, a) in p.api.iter().enumerate() {
            for (f, v) in [("input_per_mtok", a.input_per_mtok), ("output_per_mtok", a.output_per_mtok)] {
                if !v.is_finite() || v < 0.0 {
                    return Err(bad(format!("api[{i}] ({}).{f}", a.name), "must be a non-negative number"));
                }
            }
        }
        Ok(p)
    }

    /// The hourly price of `hardware`, or an error naming the table's entries.
    pub fn hour(&self, hardware: &str) -> Option<f64> {
        self.device_hour.get(hardware).copied()
    }
}

/// Serving traffic.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Traffic {
    pub requests_per_day: f64,
    /// Prompt + completion tokens per request.
    pub tokens_per_request: f64,
    /// Share of those tokens that are completion (generated) tokens.
    pub completion_share: f64,
}

impl Traffic {
    pub fn completion_tokens_per_day(&self) -> f64 {
        self.requests_per_day * self.tokens_per_request * self.completion_share
    }
    pub fn prompt_tokens_per_day(&self) -> f64 {
        self.requests_per_day * self.tokens_per_request * (1.0 - self.completion_share)
    }
}

/// Serving cost per month (30 days) of self-hosting and of each API.
#[derive(Debug, Clone, Serialize)]
pub struct ServingTco {
    /// Servers needed to keep up with the daily completion tokens at `utilization`.
    pub servers: u64,
    pub utilization: f64,
    pub server_tokens_per_sec: f64,
    pub self_hosted_per_month: f64,
    /// Storage of the model files per month.
    pub storage_per_month: f64,
    pub apis: Vec<ApiCost>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiCost {
    pub name: String,
    pub per_month: f64,
    /// Self-hosted cost / API cost (< 1: self-hosting is cheaper).
    pub ratio: f64,
    /// The smallest daily volume from which self-hosting costs no more than the API (servers
    /// added as traffic needs them); `None` when a fully used server costs more per request
    /// than the API, so self-hosting never breaks even.
    pub break_even_requests_per_day: Option<f64>,
}

pub const DAYS_PER_MONTH: f64 = 30.0;

/// Serving TCO: enough always-on servers of `hour_price` to generate the day's completion tokens
/// at `utilization` of the measured `server_tokens_per_sec` (prompt tokens are cheap next to
/// decoding on these models and are folded into the utilization margin), against each API.
pub fn serving_tco(
    traffic: Traffic,
    server_tokens_per_sec: f64,
    hour_price: f64,
    utilization: f64,
    model_gb: f64,
    prices: &Prices,
) -> ServingTco {
    let capacity_per_day = server_tokens_per_sec * utilization * 86_400.0;
    let servers = ((traffic.completion_tokens_per_day() / capacity_per_day).ceil() as u64).max(1);
    let storage = model_gb * prices.storage.gb_month;
    let self_hosted = servers as f64 * hour_price * 24.0 * DAYS_PER_MONTH + storage;
    // A server at full use serves `capacity_per_day / completion tokens per request` requests a
    // day; its cost per request then is the floor of self-hosting's price per request.
    let one_server = hour_price * 24.0 * DAYS_PER_MONTH + storage;
    let completion_per_request = traffic.tokens_per_request * traffic.completion_share;
    let requests_per_server_month = if completion_per_request > 0.0 {
        capacity_per_day / completion_per_request * DAYS_PER_MONTH
    } else {
        f64::INFINITY
    };
    let apis = prices
        .api
        .iter()
        .map(|a| {
            let per_request = traffic.tokens_per_request
                * ((1.0 - traffic.completion_share) * a.input_per_mtok
                    + traffic.completion_share * a.output_per_mtok)
                / 1e6;
            let per_month = per_request * traffic.requests_per_day * DAYS_PER_MONTH;
            // Break-even: the smallest volume at which ceil(V / C) servers cost no more than V
            // requests of the API. It exists iff a fully used server is cheaper per request than
            // the API (one_server / C <= per_request), and then one server at V = one_server / p
            // already breaks even (that V is within one server's capacity C).
            let break_even = (per_request > 0.0 && one_server / requests_per_server_month <= per_request)
                .then(|| one_server / (per_request * DAYS_PER_MONTH));
            ApiCost {
                name: a.name.clone(),
                per_month,
                ratio: self_hosted / per_month,
                break_even_requests_per_day: break_even,
            }
        })
        .collect();
    ServingTco {
        servers,
        utilization,
        server_tokens_per_sec,
        self_hosted_per_month: self_hosted,
        storage_per_month: storage,
        apis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses_and_prices_every_known_device() {
        let p = Prices::builtin();
        for hw in crate::hardware::names() {
            assert!(p.hour(hw).is_some(), "{hw} has no price");
        }
        assert!(!p.api.is_empty());
    }

    #[test]
    fn a_bad_price_names_the_file_and_field() {
        let e = Prices::parse("as_of='x'\ncurrency='USD'\n[device_hour]\nh100 = -1\n", Path::new("p.toml"))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("p.toml") && e.contains("device_hour.h100"), "{e}");
        let e =
            Prices::parse("as_of='x'\ncurrency='USD'\n[device_hour]\nh100 = 'cheap'\n", Path::new("p.toml"))
                .expect_err("refused")
                .to_string();
        assert!(e.contains("p.toml") && e.contains("line 4"), "{e}");
        let e =
            Prices::parse("as_of='x'\ncurrency='USD'\ncolour='red'\n[device_hour]\n", Path::new("p.toml"))
                .expect_err("refused")
                .to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn serving_cost_rounds_servers_up_and_break_even_makes_costs_equal() {
        let p = Prices::parse(
            "as_of='t'\ncurrency='USD'\n[device_hour]\ncpu=0.1\n[storage]\ngb_month=0\n[[api]]\nname='a'\ninput_per_mtok=1.0\noutput_per_mtok=2.0\n",
            Path::new("t"),
        )
        .expect("the prices parse");
        // 100 tokens/s at 50% = 4.32M completion tokens a day per server.
        let t = Traffic { requests_per_day: 100_000.0, tokens_per_request: 100.0, completion_share: 0.5 };
        let tco = serving_tco(t, 100.0, 0.1, 0.5, 0.0, &p);
        assert_eq!(tco.servers, 2); // 5M completion tokens/day
        assert!((tco.self_hosted_per_month - 2.0 * 0.1 * 720.0).abs() < 1e-9);
        // API: 100 tokens × (0.5 × 1 + 0.5 × 2) / 1e6 = $0.00015 a request.
        assert!((tco.apis[0].per_month - 0.00015 * 100_000.0 * 30.0).abs() < 1e-6);
        let be = tco.apis[0].break_even_requests_per_day.expect("a break-even point");
        assert!((be * 0.00015 * 30.0 - 72.0).abs() < 1e-6, "{be}");
        // A slow server (1 token/s: 864 requests of 50 completion tokens a day at 50%) costs
        // 72 / (864 × 30) = $0.0028 a request at best, above the API's $0.00015: never.
        let slow = serving_tco(t, 1.0, 0.1, 0.5, 0.0, &p);
        assert_eq!(slow.apis[0].break_even_requests_per_day, None);
        assert_eq!(slow.servers, 5_000_000u64.div_ceil(43_200));
    }
}
