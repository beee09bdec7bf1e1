//! Renamed entity types in subscriptions: the aliases the runtime knows
//! ([`super::Eventuate::aggregate`], [`super::Eventuate::entity_type_aliases`]) widen a
//! subscription to a current name so that it also reads the rows stored under the older names,
//! and give handlers the current name of the entity type of such a row.
//!
//! A widened subscription has a widened shape (its entity types include the aliases), so the
//! first start with a rename is a change of handled types, adopted like any other (see
//! [`crate::subscription_store`]): the checkpoint is kept, old-shape consumers are fenced off.
//! A subscriber that subscribed to the old name before the rename therefore continues exactly
//! where it was, now receiving the rows under both names.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::subscriber::Subscription;
use crate::{Error, Result};

/// Current entity type name -> its older names.
#[derive(Clone, Debug, Default)]
pub(crate) struct EntityTypeAliases {
    aliases: BTreeMap<String, Vec<String>>,
}

/// For one subscription: stored (older) name -> the current name handlers see.
pub(crate) type CurrentNames = HashMap<String, Arc<str>>;

impl EntityTypeAliases {
    pub(crate) fn add(&mut self, entity_type: String, aliases: impl IntoIterator<Item = String>) {
        let known = self.aliases.entry(entity_type).or_default();
        for alias in aliases {
            if !known.contains(&alias) {
                known.push(alias);
            }
        }
    }

    /// Refuses aliases that would make a stored name mean two entity types: an alias that is
    /// also a current name, or an alias of two names.
    pub(crate) fn validate(&self) -> Result<()> {
        let mut owner: HashMap<&str, &str> = HashMap::new();
        for (current, aliases) in &self.aliases {
            for alias in aliases {
                if alias == current || self.aliases.contains_key(alias) {
                    return Err(Error::Config(format!(
                        "`{alias}` is declared as an older name of entity type `{current}` but \
                         is itself a current entity type name; a stored name must mean one \
                         entity type"
                    )));
                }
                if let Some(other) = owner.insert(alias, current) {
                    if other != current {
                        return Err(Error::Config(format!(
                            "`{alias}` is declared as an older name of both `{other}` and \
                             `{current}`; a stored name must mean one entity type"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds the older names of every subscribed current name to the subscription, and returns
    /// which stored name stands for which current one.
    pub(crate) fn widen(&self, subscription: &mut Subscription) -> CurrentNames {
        let mut current_names = CurrentNames::new();
        let subscribed = subscription.entity_types.clone();
        for entity_type in &subscribed {
            let Some(aliases) = self.aliases.get(entity_type) else {
                continue;
            };
            let current: Arc<str> = Arc::from(entity_type.as_str());
            for alias in aliases {
                if !subscription.entity_types.contains(alias) {
                    subscription.entity_types.push(alias.clone());
                }
                current_names.insert(alias.clone(), current.clone());
            }
        }
        current_names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> EntityTypeAliases {
        let mut known = EntityTypeAliases::default();
        known.add("Order".into(), ["PurchaseOrder".into(), "Ord".into()]);
        known
    }

    #[test]
    fn a_subscription_to_the_current_name_is_widened_to_the_older_names() {
        let mut subscription = Subscription::new("s", ["Order", "Customer", "Ord"]);
        let names = known().widen(&mut subscription);
        assert_eq!(
            subscription.entity_types,
            ["Order", "Customer", "Ord", "PurchaseOrder"]
        );
        assert_eq!(names.get("PurchaseOrder").map(|n| &**n), Some("Order"));
        assert_eq!(names.get("Ord").map(|n| &**n), Some("Order"));
        assert!(!names.contains_key("Customer"));
        let mut old_name_only = Subscription::new("t", ["PurchaseOrder"]);
        assert!(known().widen(&mut old_name_only).is_empty());
        assert_eq!(old_name_only.entity_types, ["PurchaseOrder"]);
    }

    #[test]
    fn a_stored_name_must_mean_one_entity_type() {
        assert!(known().validate().is_ok());
        let mut both = known();
        both.add("Customer".into(), ["PurchaseOrder".into()]);
        let message = both.validate().unwrap_err().to_string();
        assert!(message.contains("both `Customer` and `Order`"), "{message}");
        let mut current = known();
        current.add("PurchaseOrder".into(), []);
        let message = current.validate().unwrap_err().to_string();
        assert!(
            message.contains("itself a current entity type name"),
            "{message}"
        );
    }
}
