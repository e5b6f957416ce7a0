use stash_macros::lifecycle;

#[lifecycle(name = "Demo", events(Start, Fail))]
pub enum Phase {
    #[initial]
    #[on(Start => Unknown, Fail => Failed)]
    Pending,
    #[terminal]
    Failed,
    #[terminal]
    #[declared_only]
    Unknown,
}

fn main() {}
